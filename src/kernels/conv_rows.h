/* The forward convolution of few input channels (conv_rows.c): how conv.c hands over a band
 * of output rows of an image's first layer (C*KH*KW small). */
#ifndef TG_KERNELS_CONV_ROWS_H
#define TG_KERNELS_CONV_ROWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tapegrad.h"

/* The most taps (C*KH*KW) the kernel takes: their offsets live on its stack. */
#define TG_CONV_ROWS_MAX_K 32

/* One image x [c][h][w], zero-padded by (ph, pw), convolved with a kh x kw kernel into y
 * [oc][oh][ow], stride 1 (oh = h + 2 ph - kh + 1, ow likewise). */
typedef struct {
    int64_t c, h, w, oc, oh, ow, kh, kw, ph, pw;
} tg_conv_rows_shape;

/* Whether conv.c takes this kernel for taps it would gather: TG_CONV_ROWS=1 in the
 * environment says always, 0 never; otherwise where the library is built for AVX-512 (see
 * conv_rows.c for why not with narrower vectors). */
bool tg_conv_rows_chosen(void);

/* The fewest output positions a band may have for dt: one vector of its elements. */
int64_t tg_conv_rows_min_positions(tg_dtype dt);

/* The scratch a band of `rows` output rows needs, in bytes. */
size_t tg_conv_rows_scratch(tg_dtype dt, const tg_conv_rows_shape *s, int64_t rows);

/* Output rows r0 .. r0 + rows - 1 of every channel of one image: y[o][r][j] = the sum over
 * ci < c, i < kh, jj < kw of w[o][ci][i][jj] xpad[ci][r + i][j + jj], summed in that order,
 * where xpad is x zero-padded. x and y are the image's own (y's rows r0 .. written, nothing
 * else); the weights [oc][c][kh][kw]; scratch holds tg_conv_rows_scratch(dt, s, rows) bytes
 * and rows * ow must be at least tg_conv_rows_min_positions(dt). */
void tg_conv_rows(tg_dtype dt, const tg_conv_rows_shape *s, const void *x, const void *w,
                  int64_t r0, int64_t rows, void *scratch, void *y);

/* After tg_conv_rows (f32) for a band of `rows` rows, with its scratch untouched since:
 * col[j] = the sum over the band's output positions of tap j's inputs (j = (ci kh + i) kw +
 * jj, as the weights), from the shifted copies in scratch (kernels/channel_sums.h). */
void tg_conv_rows_tap_sums(const tg_conv_rows_shape *s, int64_t rows, const void *scratch,
                           double *col);

#endif
