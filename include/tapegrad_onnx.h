/** @file tapegrad_onnx.h
 * tapegrad ONNX export: a traced evaluation forward pass written as an ONNX model that other
 * runtimes (ONNX Runtime, OpenCV's DNN module, ...) load.
 *
 * How to use it: trace the model's evaluation forward with a placeholder for its input
 * (the first axis of the placeholder is the batch axis, exported as the symbolic dimension
 * "N"), then export the traced output:
 *
 *     tg_mark mark = tg_tape_mark(tape);
 *     tg_tape_trace(tape, true);
 *     tg_tensor *x = tg_placeholder(tape, "images", TG_F32, 4, (int64_t[]){2, 1, 28, 28});
 *     tg_tensor *logits = model_forward(&model, x, false);
 *     tg_tape_trace(tape, false);
 *     int status = tg_export_onnx(tape, x, logits, "model.onnx", NULL);
 *     tg_tape_rewind(tape, mark);
 *
 * The traced graph goes through the compiler's early passes (dead code, simplification,
 * common subexpressions, folding of per-channel scales such as batch norm in evaluation into
 * the weights); then groups of primitives are matched to ONNX operators: convolutions (pad,
 * im2col, matmul) become Conv with the folded bias, pooling windows MaxPool or AveragePool,
 * the ReLU Relu, a matmul against constant weights Gemm, reshapes Flatten or Reshape.
 * Whatever depends only on parameters is computed once and stored as an initializer (the
 * values at the time of the call). A node that matches no ONNX operator fails the export with
 * TG_ERR_ARG and a message naming it (its op, its layer and its shape). Only float32 graphs
 * with one input are exported.
 *
 * Ownership: the function reads the tape and the parameters and writes the file; it keeps
 * nothing. The file is written to a temporary name and renamed into place, so an existing
 * file at path is either replaced whole or left as it was.
 */
#ifndef TAPEGRAD_ONNX_H
#define TAPEGRAD_ONNX_H

#include "tapegrad.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A key and value written into the model's metadata_props. */
typedef struct {
    const char *key;   /**< the key (not NULL) */
    const char *value; /**< the value (not NULL) */
} tg_onnx_meta;

/** Options of tg_export_onnx; zeroed fields (or NULL options) mean the defaults. */
typedef struct {
    /** The graph output's name; default "output". The input keeps its placeholder's name. */
    const char *output_name;
    /** The graph's name; default "tapegrad". */
    const char *graph_name;
    /** The model's doc_string: say what the input must be (for example how pixels are
     * normalized); NULL: none. */
    const char *doc;
    /** More metadata_props entries, n_meta of them (tapegrad.input, a description of the
     * input's name, type and shape, is always written). */
    const tg_onnx_meta *meta;
    /** How many entries meta has. */
    int n_meta;
    /** When not NULL, the primitive graph that was matched is written there as text
     * (DIR/onnx-graph.txt), for reading an error's node number against the graph. */
    const char *dump_dir;
} tg_onnx_options;

/** The ONNX opset the exporter writes. */
#define TG_ONNX_OPSET 13

/** Writes the traced graph from input (a placeholder) to output as an ONNX model at path.
 * The tape must hold the trace (tracing may be on or off). Returns 0, or a negative
 * tg_status: TG_ERR_NULL for a NULL argument, TG_ERR_ARG for a node with no ONNX operator
 * (named in the message) or a library built without ONNX support, TG_ERR_DTYPE for a
 * non-float32 graph, TG_ERR_IO when the file cannot be written. */
TG_API int tg_export_onnx(tg_tape *tape, tg_tensor *input, tg_tensor *output, const char *path,
                          const tg_onnx_options *opts);

/** True when the library was built with ONNX support (the `onnx` build option). */
TG_API bool tg_onnx_supported(void);

#ifdef __cplusplus
}
#endif

#endif
