/* tg_export_onnx in a library built without ONNX support (the `onnx` build option was off,
 * or protobuf-c, protoc-c or Debian's onnx.proto were missing when it was configured). */
#include "tapegrad_onnx.h"

#include "../core/internal.h"

int tg_export_onnx(tg_tape *tape, tg_tensor *input, tg_tensor *output, const char *path,
                   const tg_onnx_options *opts)
{
    TG_UNUSED(tape);
    TG_UNUSED(input);
    TG_UNUSED(output);
    TG_UNUSED(path);
    TG_UNUSED(opts);
    return tg_fail(TG_ERR_ARG, "tg_export_onnx: this tapegrad was built without ONNX support "
                   "(configure with -Donnx=enabled; it needs libprotobuf-c-dev, "
                   "protobuf-c-compiler and libonnx-dev)");
}

bool tg_onnx_supported(void) { return false; }
