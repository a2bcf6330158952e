"""The records pipeline. Importing this package imports no Beam; the Beam job lives in pipeline.job."""
