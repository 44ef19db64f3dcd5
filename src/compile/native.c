/* Native kernels (native.h): one C file per plan with a function per fused program the
 * emitter writes (kernels/fused_emit.c), compiled by the system's C compiler into a shared
 * object and loaded with dlopen.
 *
 * Compiled objects are kept in a cache directory under the hash of their source, compiler,
 * flags and the CPU (its model and feature flags: code for -march=native must not run on
 * another machine that shares the directory), so a plan built again (the next run of a
 * program, another test) loads its object without compiling: $TG_NATIVE_CACHE, else
 * $XDG_CACHE_HOME/tapegrad, else ~/.cache/tapegrad, else /tmp/tapegrad-<uid>. A compile
 * writes files of its own (the process id and a serial number in their names) and renames
 * the object into place, so builds of the same plan at once do not see each other's
 * half-written files.
 *
 * The compiler is $TG_CC, else `cc`, run with the flags the library was built with for the
 * machine (-march=native unless built portable) and $TG_CC_FLAGS after them; its output is
 * discarded (the library never prints). Anything failing here leaves the interpreter to run
 * the kernels: the plan is built either way.
 *
 * Kernels of fewer than TG_NATIVE_MIN_POINTS points (the environment's, else MIN_POINTS)
 * stay with the interpreter: they take microseconds either way, and each plan compiled
 * costs the compiler's time once. */
#include "native.h"
#include "../kernels/fused.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef TG_NATIVE_MARCH
#define TG_NATIVE_MARCH ""
#endif

#define MIN_POINTS 16384

extern char **environ;

void tg_text_printf(tg_text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        t->failed = true;
        return;
    }
    if (t->s && t->len + (size_t)n < t->cap) {
        t->len += (size_t)n;
        return;
    }
    size_t cap = t->cap ? t->cap : 4096;
    while (cap <= t->len + (size_t)n)
        cap *= 2;
    char *s = realloc(t->s, cap);
    if (!s) {
        if (t->s)
            t->s[t->len] = '\0';
        t->failed = true;
        return;
    }
    t->s = s;
    t->cap = cap;
    va_start(ap, fmt);
    vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

void tg_text_free(tg_text *t)
{
    free(t->s);
    *t = (tg_text){0};
}

/* What every generated file begins with: where's pick by bits, and a run's 16 lanes
 * (fused_emit.c's LANES) as vector values, one of 16 floats where the machine has such
 * vectors and two of 8 where not (a 16-float vector there went through general registers),
 * added pairwise in double. */
static const char prelude[] =
    "#include <math.h>\n#include <stdint.h>\n#include <string.h>\n"
    "static inline float tg_pick_f32(int k, float a, float b)\n"
    "{ uint32_t x, y, m = k ? ~(uint32_t)0 : 0; memcpy(&x, &a, 4); memcpy(&y, &b, 4);\n"
    "  x = (x & m) | (y & ~m); memcpy(&a, &x, 4); return a; }\n"
    "static inline double tg_pick_f64(int k, double a, double b)\n"
    "{ uint64_t x, y, m = k ? ~(uint64_t)0 : 0; memcpy(&x, &a, 8); memcpy(&y, &b, 8);\n"
    "  x = (x & m) | (y & ~m); memcpy(&a, &x, 8); return a; }\n"
    "#if defined(__AVX512F__)\n"
    "typedef float tg_acc_f32 __attribute__((vector_size(64)));\n"
    "static inline tg_acc_f32 tg_acc_add_f32(tg_acc_f32 a, const float *s)\n"
    "{ tg_acc_f32 v; memcpy(&v, s, sizeof v); return a + v; }\n"
    "static inline void tg_acc_out_f32(tg_acc_f32 a, float *l) { memcpy(l, &a, sizeof a); }\n"
    "#else\n"
    "typedef float tg_half_f32 __attribute__((vector_size(32)));\n"
    "typedef struct { tg_half_f32 lo, hi; } tg_acc_f32;\n"
    "static inline tg_acc_f32 tg_acc_add_f32(tg_acc_f32 a, const float *s)\n"
    "{ tg_half_f32 lo, hi; memcpy(&lo, s, sizeof lo); memcpy(&hi, s + 8, sizeof hi);\n"
    "  a.lo += lo; a.hi += hi; return a; }\n"
    "static inline void tg_acc_out_f32(tg_acc_f32 a, float *l)\n"
    "{ memcpy(l, &a.lo, sizeof a.lo); memcpy(l + 8, &a.hi, sizeof a.hi); }\n"
    "#endif\n"
    "typedef double tg_half_f64 __attribute__((vector_size(64)));\n"
    "typedef struct { tg_half_f64 lo, hi; } tg_acc_f64;\n"
    "static inline tg_acc_f64 tg_acc_add_f64(tg_acc_f64 a, const double *s)\n"
    "{ tg_half_f64 lo, hi; memcpy(&lo, s, sizeof lo); memcpy(&hi, s + 8, sizeof hi);\n"
    "  a.lo += lo; a.hi += hi; return a; }\n"
    "static inline void tg_acc_out_f64(tg_acc_f64 a, double *l)\n"
    "{ memcpy(l, &a.lo, sizeof a.lo); memcpy(l + 8, &a.hi, sizeof a.hi); }\n"
    "static inline double tg_lanes_f32(tg_acc_f32 a)\n"
    "{ float l[16]; double w[8]; tg_acc_out_f32(a, l);\n"
    "  for (int i = 0; i < 8; i++) w[i] = (double)l[i] + (double)l[i + 8];\n"
    "  return ((w[0] + w[1]) + (w[2] + w[3])) + ((w[4] + w[5]) + (w[6] + w[7])); }\n"
    "static inline double tg_lanes_f64(tg_acc_f64 a)\n"
    "{ double l[16], w[8]; tg_acc_out_f64(a, l);\n"
    "  for (int i = 0; i < 8; i++) w[i] = l[i] + l[i + 8];\n"
    "  return ((w[0] + w[1]) + (w[2] + w[3])) + ((w[4] + w[5]) + (w[6] + w[7])); }\n"
    /* a pool's copies (fused_emit.c): tg_dup2 broadcasts n >= 4 values over windows of 2,
     * into `rows` rows `row` apart; tg_unzip2 splits 2 n values into the even and the odd
     * ones. Four values a step, the last overlapping the one before where n is not a
     * multiple of 4; loops where the compiler has no vector shuffles. */
    "#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)\n"
    "#define TG_POOL_COPIES(S, T) \\\n"
    "typedef T tg_q4_##S __attribute__((vector_size(4 * sizeof(T)))); \\\n"
    "typedef T tg_q8_##S __attribute__((vector_size(8 * sizeof(T)))); \\\n"
    "static inline void tg_dup2_##S(const T *s, T *d, int64_t n, int rows, int64_t row) \\\n"
    "{ for (int64_t i = 0;; i += 4) { if (i + 4 > n) i = n - 4; \\\n"
    "    tg_q4_##S x; memcpy(&x, s + i, sizeof x); \\\n"
    "    tg_q8_##S y = __builtin_shufflevector(x, x, 0, 0, 1, 1, 2, 2, 3, 3); \\\n"
    "    for (int r = 0; r < rows; r++) memcpy(d + r * row + 2 * i, &y, sizeof y); \\\n"
    "    if (i + 4 >= n) return; } } \\\n"
    "static inline void tg_unzip2_##S(const T *s, T *a, T *b, int64_t n) \\\n"
    "{ for (int64_t i = 0;; i += 4) { if (i + 4 > n) i = n - 4; \\\n"
    "    tg_q8_##S x; memcpy(&x, s + 2 * i, sizeof x); \\\n"
    "    tg_q4_##S ev = __builtin_shufflevector(x, x, 0, 2, 4, 6); \\\n"
    "    tg_q4_##S od = __builtin_shufflevector(x, x, 1, 3, 5, 7); \\\n"
    "    memcpy(a + i, &ev, sizeof ev); memcpy(b + i, &od, sizeof od); \\\n"
    "    if (i + 4 >= n) return; } }\n"
    "#else\n"
    "#define TG_POOL_COPIES(S, T) \\\n"
    "static inline void tg_dup2_##S(const T *s, T *d, int64_t n, int rows, int64_t row) \\\n"
    "{ for (int r = 0; r < rows; r++) for (int64_t i = 0; i < n; i++) \\\n"
    "    d[r * row + 2 * i] = d[r * row + 2 * i + 1] = s[i]; } \\\n"
    "static inline void tg_unzip2_##S(const T *s, T *a, T *b, int64_t n) \\\n"
    "{ for (int64_t i = 0; i < n; i++) { a[i] = s[2 * i]; b[i] = s[2 * i + 1]; } }\n"
    "#endif\n"
    "TG_POOL_COPIES(f32, float)\nTG_POOL_COPIES(f64, double)\n";

static uint64_t hash_bytes(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) { /* FNV-1a */
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* The CPU's model and feature flags, as /proc/cpuinfo gives them for its first processor
 * (nothing where it cannot be read). */
static uint64_t hash_cpu(uint64_t h)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[8192];
    int found = 0;
    while (f && found < 2 && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0 || strncmp(line, "flags", 5) == 0) {
            h = hash_bytes(h, line, strlen(line));
            found++;
        }
    }
    if (f)
        fclose(f);
    return h;
}

static bool make_dir(const char *path)
{
    return mkdir(path, 0700) == 0 || errno == EEXIST;
}

static bool cache_dir(char *dir, size_t size)
{
    const char *env = getenv("TG_NATIVE_CACHE");
    if (env && env[0]) {
        snprintf(dir, size, "%s", env);
        return make_dir(dir);
    }
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if ((xdg && xdg[0]) || (home && home[0])) {
        if (xdg && xdg[0])
            snprintf(dir, size, "%s", xdg);
        else
            snprintf(dir, size, "%s/.cache", home);
        if (make_dir(dir)) {
            size_t len = strlen(dir);
            snprintf(dir + len, size - len, "/tapegrad");
            if (make_dir(dir))
                return true;
        }
    }
    snprintf(dir, size, "/tmp/tapegrad-%ld", (long)getuid());
    return make_dir(dir);
}

/* The compiler's command: words split at spaces. */
typedef struct {
    char buf[2048];
    char *argv[64];
    int argc;
} command;

static void add_words(command *c, size_t *used, const char *words)
{
    while (words && *words) {
        while (*words == ' ')
            words++;
        size_t len = strcspn(words, " ");
        if (len == 0 || *used + len + 1 > sizeof c->buf || c->argc + 8 >= 64)
            return;
        memcpy(c->buf + *used, words, len);
        c->buf[*used + len] = '\0';
        c->argv[c->argc++] = c->buf + *used;
        *used += len + 1;
        words += len;
    }
}

static void compiler_command(command *c)
{
    size_t used = 0;
    c->argc = 0;
    const char *cc = getenv("TG_CC");
    add_words(c, &used, cc && cc[0] ? cc : "cc");
    add_words(c, &used, "-std=c11 -O3 -fPIC -shared -fopenmp-simd -fno-trapping-math -w");
    add_words(c, &used, TG_NATIVE_MARCH);
    add_words(c, &used, getenv("TG_CC_FLAGS"));
}

/* Runs the compiler on src into so; its output to /dev/null. */
static bool compile(command *c, const char *src, const char *so)
{
    int argc = c->argc;
    c->argv[argc] = "-o";
    c->argv[argc + 1] = (char *)so;
    c->argv[argc + 2] = (char *)src;
    c->argv[argc + 3] = NULL;
    posix_spawn_file_actions_t actions;
    if (posix_spawn_file_actions_init(&actions) != 0)
        return false;
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int status = posix_spawnp(&pid, c->argv[0], &actions, NULL, c->argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    if (status != 0)
        return false;
    int how;
    while (waitpid(pid, &how, 0) < 0)
        if (errno != EINTR)
            return false;
    return WIFEXITED(how) && WEXITSTATUS(how) == 0;
}

static bool write_file(const char *path, const char *s, size_t n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return false;
    bool ok = fwrite(s, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* The object for source, from the cache or compiled into it; NULL with *why on failure. */
static void *load_object(const tg_text *source, const char **why)
{
    command c;
    compiler_command(&c);
    uint64_t h = hash_bytes(1469598103934665603ull, source->s, source->len);
    for (int i = 0; i < c.argc; i++)
        h = hash_bytes(h, c.argv[i], strlen(c.argv[i]) + 1);
    h = hash_cpu(h);
    char dir[1024], so[1200], tmp_so[1300], tmp_c[1300];
    if (!cache_dir(dir, sizeof dir)) {
        *why = "no cache directory could be made";
        return NULL;
    }
    snprintf(so, sizeof so, "%s/k%016llx.so", dir, (unsigned long long)h);
    void *handle = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (handle)
        return handle;
    static atomic_uint serial;
    long pid = (long)getpid();
    unsigned n = atomic_fetch_add(&serial, 1);
    snprintf(tmp_c, sizeof tmp_c, "%s/k%016llx.%ld.%u.c", dir, (unsigned long long)h, pid, n);
    snprintf(tmp_so, sizeof tmp_so, "%s/k%016llx.%ld.%u.so", dir, (unsigned long long)h, pid, n);
    bool ok = write_file(tmp_c, source->s, source->len);
    if (!ok)
        *why = "the kernels' source could not be written to the cache directory";
    else if (!(ok = compile(&c, tmp_c, tmp_so)))
        *why = "the C compiler ($TG_CC, else cc) did not run or failed";
    else if (!(ok = rename(tmp_so, so) == 0))
        *why = "the compiled kernels could not be moved into the cache directory";
    unlink(tmp_c);
    if (!ok) {
        unlink(tmp_so);
        return NULL;
    }
    handle = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!handle)
        *why = "the compiled kernels could not be loaded";
    return handle;
}

/* Points of a program's iteration space. */
static int64_t points(const tg_fused_program *p)
{
    int64_t n = 1;
    for (int k = 0; k < p->ndim; k++)
        n *= p->shape[k];
    return n;
}

static int64_t min_points(void)
{
    const char *env = getenv("TG_NATIVE_MIN_POINTS");
    char *end;
    long long n = env ? strtoll(env, &end, 10) : -1;
    return env && end != env && *end == '\0' && n >= 0 ? (int64_t)n : MIN_POINTS;
}

void *tg_native_load(tg_graph *g, const char *dump_dir, int *count, const char **why)
{
    *count = 0;
    *why = NULL;
    int64_t least = min_points();
    tg_text source = {0};
    tg_text_printf(&source, "%s", prelude);
    tg_fused_emitted *made = calloc((size_t)g->n + 1, sizeof *made);
    bool *emitted = calloc((size_t)g->n + 1, sizeof *emitted);
    int n_emitted = 0;
    for (int i = 0; i < g->n && made && emitted; i++) {
        tg_ir_node *x = &g->nodes[i];
        if (x->op != TG_PLAN_OP_FUSED || !x->payload || points(x->payload) < least ||
            tg_fused_transposes(x->payload))
            continue;
        char name[32];
        snprintf(name, sizeof name, "tg_kernel_%d", i);
        emitted[i] = tg_fused_emit(x->payload, name, &source, &made[i]);
        n_emitted += emitted[i];
    }
    if (dump_dir && n_emitted > 0 && !source.failed) { /* best effort, as a debugging aid */
        char path[4096];
        snprintf(path, sizeof path, "%s/native.c", dump_dir);
        write_file(path, source.s, source.len);
    }
    void *handle = NULL;
    if (!made || !emitted || source.failed)
        *why = "out of memory";
    else if (n_emitted > 0)
        handle = load_object(&source, why);
    for (int i = 0; i < g->n && handle; i++) {
        if (!emitted[i])
            continue;
        char name[32];
        snprintf(name, sizeof name, "tg_kernel_%d", i);
        tg_fused_program *p = g->nodes[i].payload;
        void *fn = dlsym(handle, name), *combine = NULL;
        if (made[i].part_bytes > 0) {
            char combine_name[48];
            snprintf(combine_name, sizeof combine_name, "%s_combine", name);
            combine = dlsym(handle, combine_name);
        }
        if (!fn || (made[i].part_bytes > 0 && !combine))
            continue;
        /* ISO C has no object-to-function cast */
        memcpy(&p->native, &fn, sizeof fn);
        memcpy(&p->native_combine, &combine, sizeof combine);
        p->native_units = made[i].units > 0 ? made[i].units : 1;
        /* the partial sums in the node's scratch (memory planning comes after this) */
        if (g->nodes[i].scratch_bytes < made[i].part_bytes)
            g->nodes[i].scratch_bytes = made[i].part_bytes;
        (*count)++;
    }
    free(made);
    free(emitted);
    tg_text_free(&source);
    return handle;
}

void tg_native_unload(void *handle)
{
    if (handle)
        dlclose(handle);
}
