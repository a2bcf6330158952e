"""rotnet's Python API: which way up is a photo, and the photo turned upright, with a trained model.

    import rotnet
    model = rotnet.load("runs/photos", quarter_turns=True)     # rotnet-train --output dir, .keras, .tflite...
    for found in model.detect(["a.jpg", "b.png"]):              # paths, bytes, HWC arrays or PIL images
        print(found.source, found.angle_degrees, found.confidence, found.needs_rotation)
    fixed = model.correct("a.jpg", lossless="exif")             # -> rotnet.Correction
    fixed.save("a-upright.jpg")                                 # never over an existing file

Importing rotnet is light (no TensorFlow); `load` starts TensorFlow once. rotnet/api.py has the details.
"""

from __future__ import annotations

from rotnet.api import Correction, Detection, Model, load

__all__ = ["Correction", "Detection", "Model", "load"]
