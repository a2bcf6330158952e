"""The trainer: streams records with tf.data into the RotNet models."""
