"""Checks an ONNX file exported by tapegrad with code nobody here wrote.

  /usr/bin/python3 check_onnx.py MODEL.onnx LOGITS.f32 DATA_DIR EXPECTED_OPS TAPEGRAD_ACC

1. onnx.checker.check_model(full_check=True) (Debian's python3-onnx): schema, types, shapes.
2. The graph: its operators are EXPECTED_OPS (comma-separated, in order), its input is
   float [N, 1, 28, 28] with a symbolic batch N, and its metadata describes the input.
3. OpenCV's DNN module (python3-opencv) runs it on the 10,000 MNIST test images, normalized
   as the example normalizes them, in batches of 1000: its logits agree with tapegrad's
   (LOGITS.f32, from tests/onnx/onnx_logits) to 1e-4 relative, per image
   max|a - b| / max|b|, and its accuracy equals TAPEGRAD_ACC (what tapegrad measured).
Prints one key=value line with the figures; exits 1 on a failed check."""
import gzip
import os
import sys

import numpy as np
import onnx
import cv2

MEAN, STD = 0.1307, 0.3081
TOLERANCE = 1e-4


def read_idx(path):
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fail(message):
    print("FAILED: " + message)
    sys.exit(1)


def main():
    model_path, logits_path, data_dir, expected_ops, tapegrad_acc = sys.argv[1:6]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    print("operators: " + " ".join(ops))
    if ops != expected_ops.split(","):
        fail("expected the operators %s" % expected_ops)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    if [d.dim_param or d.dim_value for d in dims] != ["N", 1, 28, 28]:
        fail("the input is not [N, 1, 28, 28]: %s" % dims)
    meta = {p.key: p.value for p in model.metadata_props}
    if "tapegrad.input" not in meta or model.producer_name != "tapegrad":
        fail("no producer or input description in the metadata: %s" % meta)

    images = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte"))
    labels = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte"))
    x = ((images.astype(np.float32) / np.float32(255) - np.float32(MEAN)) / np.float32(STD))
    x = x.reshape(-1, 1, 28, 28).astype(np.float32)
    ours = np.fromfile(logits_path, dtype=np.float32).reshape(-1, 10)
    if ours.shape[0] != x.shape[0]:
        fail("%d tapegrad logits for %d images" % (ours.shape[0], x.shape[0]))

    net = cv2.dnn.readNetFromONNX(model_path)
    theirs = []
    for start in range(0, x.shape[0], 1000):
        net.setInput(x[start:start + 1000])
        theirs.append(net.forward().copy())
    theirs = np.concatenate(theirs)
    scale = np.maximum(np.abs(ours).max(axis=1), 1e-30)
    rel = (np.abs(theirs - ours).max(axis=1) / scale).max()
    acc = 100.0 * float((theirs.argmax(axis=1) == labels).mean())
    print("checker=ok opencv_max_rel_diff=%.3g opencv_max_abs_diff=%.3g opencv_acc=%.2f "
          "tapegrad_acc=%s argmax_disagreements=%d"
          % (rel, np.abs(theirs - ours).max(), acc, tapegrad_acc,
             int((theirs.argmax(axis=1) != ours.argmax(axis=1)).sum())))
    if not rel <= TOLERANCE:
        fail("OpenCV's logits differ from tapegrad's by %.3g relative (> %g)" % (rel, TOLERANCE))
    if "%.2f" % acc != tapegrad_acc:
        fail("OpenCV's accuracy %.2f%% is not tapegrad's %s%%" % (acc, tapegrad_acc))


if __name__ == "__main__":
    main()
