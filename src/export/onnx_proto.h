/* Building an ONNX model with protobuf-c's generated structs (from Debian's onnx.proto), and
 * writing it: the only place that knows the generated names.
 *
 * Every struct and string of the model is allocated by the builder and freed with it
 * (onnx_builder_free), so the matcher never frees a piece of the model by hand. Names handed
 * back are the builder's copies, valid until it is freed. */
#ifndef TG_EXPORT_ONNX_PROTO_H
#define TG_EXPORT_ONNX_PROTO_H

#include <stddef.h>
#include <stdint.h>

typedef struct onnx_builder onnx_builder;
typedef struct Onnx__NodeProto onnx_node;

onnx_builder *onnx_builder_new(const char *graph_name);
void onnx_builder_free(onnx_builder *b);

/* A unique tensor name made from hint ("block1.conv" -> "block1.conv", then
 * "block1.conv_2"...). NULL when out of memory. */
const char *onnx_unique_name(onnx_builder *b, const char *hint);

/* An initializer (float32 or int64) holding a copy of data; returns its name. */
const char *onnx_add_float_init(onnx_builder *b, const char *hint, int ndim, const int64_t *dims,
                                const float *data);
const char *onnx_add_int64_init(onnx_builder *b, const char *hint, int64_t n,
                                const int64_t *data);

/* A node of op_type reading n_in tensors and writing one, named after hint; NULL when out
 * of memory. The output's name is onnx_node_output(node). */
onnx_node *onnx_add_node(onnx_builder *b, const char *op_type, const char *hint, int n_in,
                         const char *const *in);
const char *onnx_node_output(const onnx_node *node);
int onnx_attr_int(onnx_builder *b, onnx_node *node, const char *name, int64_t value);
int onnx_attr_ints(onnx_builder *b, onnx_node *node, const char *name, int n,
                   const int64_t *values);
int onnx_attr_float(onnx_builder *b, onnx_node *node, const char *name, float value);

/* The graph's input or output: a float32 tensor whose first axis is the symbolic batch
 * "batch_param" and the others dims[1..ndim). */
int onnx_add_graph_io(onnx_builder *b, int is_output, const char *name, int ndim,
                      const int64_t *dims, const char *batch_param);
/* Every use of tensor name `from` (node inputs and outputs) becomes `to`. */
int onnx_rename(onnx_builder *b, const char *from, const char *to);

int onnx_add_meta(onnx_builder *b, const char *key, const char *value);
int onnx_set_doc(onnx_builder *b, const char *doc);
int onnx_node_count(const onnx_builder *b);
const char *onnx_node_op(const onnx_builder *b, int i);

/* Packs the model (IR version, opset, producer "tapegrad" and the library's version) and
 * writes it at path through a temporary file renamed into place. 0 or a negative tg_status
 * with the error set. */
int onnx_write(onnx_builder *b, int64_t opset, const char *path);

#endif
