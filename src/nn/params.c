/* Named parameter lists: (name, tensor, kind) entries that layers register into, so that
 * optimizers and checkpoints can walk a model without knowing its layers. A list owns its
 * names only; lookups are linear, which is fine for the tens of entries a model has. */
#include "internal.h"
#include "layer_common.h"

#include <stdlib.h>
#include <string.h>

struct tg_params {
    tg_param *entries;
    size_t count;
    size_t cap;
};

tg_params *tg_params_new(void)
{
    tg_params *params = calloc(1, sizeof *params);
    if (!params)
        tg_fail(TG_ERR_NOMEM, "tg_params_new: out of memory");
    return params;
}

void tg_params_free(tg_params *params)
{
    if (!params)
        return;
    for (size_t i = 0; i < params->count; i++)
        free((void *)params->entries[i].name);
    free(params->entries);
    free(params);
}

tg_tensor *tg_params_find(const tg_params *params, const char *name)
{
    if (!params || !name)
        return NULL;
    for (size_t i = 0; i < params->count; i++)
        if (strcmp(params->entries[i].name, name) == 0)
            return params->entries[i].tensor;
    return NULL;
}

int tg_params_add(tg_params *params, const char *prefix, const char *name, tg_tensor *tensor,
                  tg_param_kind kind)
{
    if (!params || !name || !tensor)
        return tg_fail(TG_ERR_NULL, "tg_params_add: %s is NULL",
                       !params ? "the list" : !name ? "the name" : "the tensor");
    if (!*name)
        return tg_fail(TG_ERR_ARG, "tg_params_add: the name is empty");
    if (kind != TG_TRAINABLE && kind != TG_BUFFER)
        return tg_fail(TG_ERR_ARG, "tg_params_add: unknown kind %d for '%s'", (int)kind, name);
    /* Optimizers and checkpoints write into the tensor's values; only a leaf owns them. */
    if (tensor->op != TG_OP_LEAF)
        return tg_fail(TG_ERR_ARG, "tg_params_add: '%s' is a %s node; parameters and buffers "
                       "must be leaves", name, tg_op_name(tensor->op));
    bool prefixed = prefix && *prefix;
    size_t len = (prefixed ? strlen(prefix) + 1 : 0) + strlen(name) + 1;
    char *full = malloc(len);
    if (!full)
        return tg_fail(TG_ERR_NOMEM, "tg_params_add: out of memory");
    if (prefixed) {
        strcpy(full, prefix);
        strcat(full, ".");
        strcat(full, name);
    } else {
        strcpy(full, name);
    }
    if (tg_params_find(params, full)) {
        tg_fail(TG_ERR_ARG, "tg_params_add: '%s' is already in the list", full);
        free(full);
        return TG_ERR_ARG;
    }
    if (params->count == params->cap) {
        size_t cap = params->cap ? 2 * params->cap : 16;
        tg_param *entries = realloc(params->entries, cap * sizeof *entries);
        if (!entries) {
            free(full);
            return tg_fail(TG_ERR_NOMEM, "tg_params_add: out of memory");
        }
        params->entries = entries;
        params->cap = cap;
    }
    params->entries[params->count++] = (tg_param){full, tensor, kind};
    return TG_OK;
}

int tg_params_append(tg_params *dst, const tg_params *src, const char *prefix)
{
    if (!dst || !src)
        return tg_fail(TG_ERR_NULL, "tg_params_append: %s is NULL", !dst ? "dst" : "src");
    if (dst == src)
        return tg_fail(TG_ERR_ARG, "tg_params_append: dst and src are the same list");
    /* All or nothing: on a failure (a name clash, say) the entries added so far go again. */
    size_t before = dst->count;
    for (size_t i = 0; i < src->count; i++) {
        const tg_param *e = &src->entries[i];
        int status = tg_params_add(dst, prefix, e->name, e->tensor, e->kind);
        if (status != TG_OK) {
            while (dst->count > before)
                free((void *)dst->entries[--dst->count].name);
            return status;
        }
    }
    return TG_OK;
}

size_t tg_params_count(const tg_params *params) { return params ? params->count : 0; }

const tg_param *tg_params_get(const tg_params *params, size_t index)
{
    return params && index < params->count ? &params->entries[index] : NULL;
}

size_t tg_params_trainable(const tg_params *params, tg_tensor **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; params && i < params->count; i++) {
        if (params->entries[i].kind != TG_TRAINABLE)
            continue;
        if (out && n < cap)
            out[n] = params->entries[i].tensor;
        n++;
    }
    return n;
}

int tg_nn_register_weight_and_bias(tg_params *params, const char *prefix, tg_tensor *weight,
                                   tg_tensor *bias)
{
    int status = tg_params_add(params, prefix, "weight", weight, TG_TRAINABLE);
    if (status == TG_OK && bias)
        status = tg_params_add(params, prefix, "bias", bias, TG_TRAINABLE);
    return status;
}
