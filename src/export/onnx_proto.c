/* The ONNX model as protobuf-c structs (onnx.pb-c.h is generated at build time from
 * /usr/include/onnx/onnx.proto), and its packing into a file written atomically.
 *
 * Memory: every allocation goes through arena_alloc and is remembered, so freeing the builder
 * frees the whole model; the growable lists (nodes, initializers, ...) are arrays of pointers
 * the builder reallocates, installed into the GraphProto only when writing. */
#include "onnx_proto.h"
#include "onnx.pb-c.h"

#include "../core/internal.h"
#include "../io/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ATTRS 8

typedef struct {
    void **items;
    size_t n, cap;
} ptr_list;

struct onnx_builder {
    ptr_list blocks; /* every allocation */
    ptr_list nodes, inits, inputs, outputs, meta, names;
    char *graph_name, *doc;
};

static int list_push(ptr_list *l, void *p)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 32;
        void **items = realloc(l->items, cap * sizeof *items);
        if (!items)
            return -1;
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = p;
    return 0;
}

static void *arena_alloc(onnx_builder *b, size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (p && list_push(&b->blocks, p) != 0) {
        free(p);
        p = NULL;
    }
    return p;
}

static char *arena_strdup(onnx_builder *b, const char *s)
{
    size_t len = strlen(s) + 1;
    char *copy = arena_alloc(b, len);
    if (copy)
        memcpy(copy, s, len);
    return copy;
}

onnx_builder *onnx_builder_new(const char *graph_name)
{
    onnx_builder *b = calloc(1, sizeof *b);
    if (b && !(b->graph_name = arena_strdup(b, graph_name))) {
        onnx_builder_free(b);
        b = NULL;
    }
    return b;
}

void onnx_builder_free(onnx_builder *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->blocks.n; i++)
        free(b->blocks.items[i]);
    ptr_list *lists[] = {&b->blocks, &b->nodes, &b->inits, &b->inputs, &b->outputs, &b->meta,
                         &b->names};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++)
        free(lists[i]->items);
    free(b);
}

static bool name_taken(const onnx_builder *b, const char *name)
{
    for (size_t i = 0; i < b->names.n; i++)
        if (strcmp(b->names.items[i], name) == 0)
            return true;
    return false;
}

const char *onnx_unique_name(onnx_builder *b, const char *hint)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", hint && *hint ? hint : "t");
    for (int k = 2; name_taken(b, buf); k++)
        snprintf(buf, sizeof buf, "%s_%d", hint && *hint ? hint : "t", k);
    char *name = arena_strdup(b, buf);
    if (!name || list_push(&b->names, name) != 0)
        return NULL;
    return name;
}

static Onnx__TensorProto *new_init(onnx_builder *b, const char *hint, int ndim,
                                   const int64_t *dims, int32_t type, const void *data,
                                   size_t bytes)
{
    Onnx__TensorProto *t = arena_alloc(b, sizeof *t);
    const char *name = onnx_unique_name(b, hint);
    if (!t || !name)
        return NULL;
    onnx__tensor_proto__init(t);
    t->name = (char *)name;
    t->has_data_type = 1;
    t->data_type = type;
    t->n_dims = (size_t)ndim;
    t->dims = arena_alloc(b, (size_t)(ndim ? ndim : 1) * sizeof *t->dims);
    /* raw_data is little-endian; so is every machine this builds on (x86-64, arm64). */
    t->has_raw_data = 1;
    t->raw_data.len = bytes;
    t->raw_data.data = arena_alloc(b, bytes);
    if (!t->dims || !t->raw_data.data || list_push(&b->inits, t) != 0)
        return NULL;
    memcpy(t->dims, dims, (size_t)ndim * sizeof *dims);
    memcpy(t->raw_data.data, data, bytes);
    return t;
}

const char *onnx_add_float_init(onnx_builder *b, const char *hint, int ndim, const int64_t *dims,
                                const float *data)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    Onnx__TensorProto *t = new_init(b, hint, ndim, dims, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT,
                                    data, (size_t)n * sizeof(float));
    return t ? t->name : NULL;
}

const char *onnx_add_int64_init(onnx_builder *b, const char *hint, int64_t n,
                                const int64_t *data)
{
    Onnx__TensorProto *t = new_init(b, hint, 1, &n, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, data,
                                    (size_t)n * sizeof(int64_t));
    return t ? t->name : NULL;
}

onnx_node *onnx_add_node(onnx_builder *b, const char *op_type, const char *hint, int n_in,
                         const char *const *in)
{
    Onnx__NodeProto *node = arena_alloc(b, sizeof *node);
    char **inputs = arena_alloc(b, (size_t)(n_in ? n_in : 1) * sizeof *inputs);
    char **outputs = arena_alloc(b, sizeof *outputs);
    Onnx__AttributeProto **attrs = arena_alloc(b, MAX_ATTRS * sizeof *attrs);
    const char *out = onnx_unique_name(b, hint);
    if (!node || !inputs || !outputs || !attrs || !out)
        return NULL;
    onnx__node_proto__init(node);
    for (int i = 0; i < n_in; i++)
        if (!(inputs[i] = arena_strdup(b, in[i])))
            return NULL;
    outputs[0] = (char *)out;
    node->n_input = (size_t)n_in;
    node->input = inputs;
    node->n_output = 1;
    node->output = outputs;
    node->name = (char *)out; /* node and output share the (unique) name */
    node->op_type = arena_strdup(b, op_type);
    node->attribute = attrs;
    if (!node->op_type || list_push(&b->nodes, node) != 0)
        return NULL;
    return node;
}

const char *onnx_node_output(const onnx_node *node) { return node->output[0]; }

static Onnx__AttributeProto *new_attr(onnx_builder *b, onnx_node *node, const char *name,
                                      Onnx__AttributeProto__AttributeType type)
{
    if (node->n_attribute == MAX_ATTRS)
        return NULL;
    Onnx__AttributeProto *a = arena_alloc(b, sizeof *a);
    if (!a)
        return NULL;
    onnx__attribute_proto__init(a);
    if (!(a->name = arena_strdup(b, name)))
        return NULL;
    a->has_type = 1;
    a->type = type;
    node->attribute[node->n_attribute++] = a;
    return a;
}

int onnx_attr_int(onnx_builder *b, onnx_node *node, const char *name, int64_t value)
{
    Onnx__AttributeProto *a = new_attr(b, node, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (!a)
        return -1;
    a->has_i = 1;
    a->i = value;
    return 0;
}

int onnx_attr_ints(onnx_builder *b, onnx_node *node, const char *name, int n,
                   const int64_t *values)
{
    Onnx__AttributeProto *a =
        new_attr(b, node, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    if (!a || !(a->ints = arena_alloc(b, (size_t)n * sizeof *a->ints)))
        return -1;
    a->n_ints = (size_t)n;
    memcpy(a->ints, values, (size_t)n * sizeof *values);
    return 0;
}

int onnx_attr_float(onnx_builder *b, onnx_node *node, const char *name, float value)
{
    Onnx__AttributeProto *a =
        new_attr(b, node, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (!a)
        return -1;
    a->has_f = 1;
    a->f = value;
    return 0;
}

int onnx_add_graph_io(onnx_builder *b, int is_output, const char *name, int ndim,
                      const int64_t *dims, const char *batch_param)
{
    Onnx__ValueInfoProto *v = arena_alloc(b, sizeof *v);
    Onnx__TypeProto *type = arena_alloc(b, sizeof *type);
    Onnx__TypeProto__Tensor *tensor = arena_alloc(b, sizeof *tensor);
    Onnx__TensorShapeProto *shape = arena_alloc(b, sizeof *shape);
    Onnx__TensorShapeProto__Dimension **d = arena_alloc(b, (size_t)(ndim ? ndim : 1) * sizeof *d);
    if (!v || !type || !tensor || !shape || !d)
        return -1;
    onnx__value_info_proto__init(v);
    onnx__type_proto__init(type);
    onnx__type_proto__tensor__init(tensor);
    onnx__tensor_shape_proto__init(shape);
    for (int i = 0; i < ndim; i++) {
        if (!(d[i] = arena_alloc(b, sizeof *d[i])))
            return -1;
        onnx__tensor_shape_proto__dimension__init(d[i]);
        if (i == 0 && batch_param) {
            d[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            if (!(d[i]->dim_param = arena_strdup(b, batch_param)))
                return -1;
        } else {
            d[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d[i]->dim_value = dims[i];
        }
    }
    shape->n_dim = (size_t)ndim;
    shape->dim = d;
    tensor->has_elem_type = 1;
    tensor->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tensor->shape = shape;
    type->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    type->tensor_type = tensor;
    v->type = type;
    if (!(v->name = arena_strdup(b, name)))
        return -1;
    return list_push(is_output ? &b->outputs : &b->inputs, v);
}

int onnx_rename(onnx_builder *b, const char *from, const char *to)
{
    char *copy = arena_strdup(b, to), *old = arena_strdup(b, from);
    if (!copy || !old)
        return -1;
    for (size_t i = 0; i < b->nodes.n; i++) {
        Onnx__NodeProto *n = b->nodes.items[i];
        for (size_t k = 0; k < n->n_input; k++)
            if (strcmp(n->input[k], old) == 0)
                n->input[k] = copy;
        if (strcmp(n->output[0], old) == 0)
            n->output[0] = copy;
    }
    return 0;
}

int onnx_add_meta(onnx_builder *b, const char *key, const char *value)
{
    Onnx__StringStringEntryProto *e = arena_alloc(b, sizeof *e);
    if (!e)
        return -1;
    onnx__string_string_entry_proto__init(e);
    e->key = arena_strdup(b, key);
    e->value = arena_strdup(b, value);
    if (!e->key || !e->value)
        return -1;
    return list_push(&b->meta, e);
}

int onnx_set_doc(onnx_builder *b, const char *doc)
{
    return (b->doc = arena_strdup(b, doc)) ? 0 : -1;
}

int onnx_node_count(const onnx_builder *b) { return (int)b->nodes.n; }

const char *onnx_node_op(const onnx_builder *b, int i)
{
    return ((Onnx__NodeProto *)b->nodes.items[i])->op_type;
}

/* Writes len bytes at path through path.tmp.PID, fsync'ed and renamed into place. */
static int write_atomically(const char *path, const uint8_t *buf, size_t len)
{
    char errbuf[128];
    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    if (!tmp)
        return tg_fail(TG_ERR_NOMEM, "tg_export_onnx: out of memory");
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = tg_fail(TG_ERR_IO, "tg_export_onnx: cannot create %s: %s", tmp,
                         tg_errno_str(errno, errbuf, sizeof errbuf));
        free(tmp);
        return rc;
    }
    int err = 0;
    for (size_t done = 0; done < len && !err;) {
        ssize_t w = write(fd, buf + done, len - done);
        if (w < 0 && errno != EINTR)
            err = errno;
        else if (w > 0)
            done += (size_t)w;
    }
    if (!err && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) != 0)
        err = errno;
    int rc = TG_OK;
    if (err) {
        rc = tg_fail(TG_ERR_IO, "tg_export_onnx: writing %s failed: %s", path,
                     tg_errno_str(err, errbuf, sizeof errbuf));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

int onnx_write(onnx_builder *b, int64_t opset, const char *path)
{
    Onnx__GraphProto graph = ONNX__GRAPH_PROTO__INIT;
    graph.name = b->graph_name;
    graph.n_node = b->nodes.n;
    graph.node = (Onnx__NodeProto **)b->nodes.items;
    graph.n_initializer = b->inits.n;
    graph.initializer = (Onnx__TensorProto **)b->inits.items;
    graph.n_input = b->inputs.n;
    graph.input = (Onnx__ValueInfoProto **)b->inputs.items;
    graph.n_output = b->outputs.n;
    graph.output = (Onnx__ValueInfoProto **)b->outputs.items;

    Onnx__OperatorSetIdProto op_set = ONNX__OPERATOR_SET_ID_PROTO__INIT, *op_sets[1] = {&op_set};
    op_set.domain = "";
    op_set.has_version = 1;
    op_set.version = opset;

    Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
    model.has_ir_version = 1;
    model.ir_version = 7; /* the IR of opset 13 (ONNX 1.8); newer readers accept it */
    model.n_opset_import = 1;
    model.opset_import = op_sets;
    model.producer_name = "tapegrad";
    model.producer_version = (char *)tg_version();
    model.doc_string = b->doc;
    model.graph = &graph;
    model.n_metadata_props = b->meta.n;
    model.metadata_props = (Onnx__StringStringEntryProto **)b->meta.items;

    size_t len = onnx__model_proto__get_packed_size(&model);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return tg_fail(TG_ERR_NOMEM, "tg_export_onnx: out of memory (%zu bytes)", len);
    size_t packed = onnx__model_proto__pack(&model, buf);
    int rc = packed == len ? write_atomically(path, buf, len)
                           : tg_fail(TG_ERR_ARG, "tg_export_onnx: protobuf packing failed");
    free(buf);
    return rc;
}
