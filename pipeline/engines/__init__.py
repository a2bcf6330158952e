"""Distributed engines on this machine: Flink (and Spark) session clusters and Beam's job servers.

* `dist`: fetch an engine's distribution from PyPI and Beam's job server from Maven Central, once, into
  a user cache (~/.cache/rotnet/engines), checksummed; never installed into the environment.
* `cluster`: start one master and several workers as separate JVMs on 127.0.0.1 (free ports), wait
  until the master's REST API shows every worker, stop exactly the processes started (by PID).
* `launch`: what `rotnet-pipeline --runner FlinkRunner|SparkRunner` fills in and starts for a run (the
  job server from the cache, a Beam worker pool), with one-line errors for what cannot work.
* `cli`: `rotnet-cluster fetch|start|stop|status`.

Nothing here imports TensorFlow; Beam only inside functions.
"""
