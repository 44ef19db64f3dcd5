"""OpenCV runs tests/onnx/onnx_layers' model on its input: the output matches tapegrad's.

  /usr/bin/python3 check_layers.py DIR"""
import os
import sys

import numpy as np
import onnx
import cv2

d = sys.argv[1]
model = onnx.load(os.path.join(d, "layers.onnx"))
onnx.checker.check_model(model, full_check=True)
print("operators: " + " ".join(n.op_type for n in model.graph.node))
x = np.fromfile(os.path.join(d, "x.f32"), dtype=np.float32).reshape(5, 2, 15, 15)
ours = np.fromfile(os.path.join(d, "y.f32"), dtype=np.float32).reshape(5, 6)
net = cv2.dnn.readNetFromONNX(os.path.join(d, "layers.onnx"))
net.setInput(x)
theirs = net.forward()
rel = (np.abs(theirs - ours).max(axis=1) / np.abs(ours).max(axis=1)).max()
print("checker=ok opencv_max_rel_diff=%.3g" % rel)
if not rel <= 1e-4:
    print("FAILED: OpenCV's output differs from tapegrad's by %.3g relative" % rel)
    sys.exit(1)
