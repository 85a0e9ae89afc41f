/* kernels._cpu: the Python face of the compiled CPU kernels. Argument checking happens here,
 * with the GIL held; all compute runs with the GIL released on the worker pool. */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "act_quant.h"
#include "dequant.h"
#include "pool.h"
#include "qtypes.h"

/* ------------------------------------------------------------------ ISA selection */

static const kernel_set *ISAS[] = {  /* best first */
#if defined(__x86_64__) || defined(__i386__)
    &KERNELS_AVX512VNNI,
    &KERNELS_AVX2,
#endif
    &KERNELS_SCALAR,
};
#define N_ISAS ((int)(sizeof ISAS / sizeof ISAS[0]))

static const kernel_set *active;

static int cpu_has(const kernel_set *ks) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (ks == &KERNELS_AVX2) return avx2;
    if (ks == &KERNELS_AVX512VNNI)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    return ks == &KERNELS_SCALAR;
}

static const kernel_set *isa_named(const char *name) {
    for (int i = 0; i < N_ISAS; i++)
        if (strcmp(ISAS[i]->name, name) == 0) return ISAS[i];
    return NULL;
}

static const kernel_set *best_isa(void) {
    for (int i = 0; i < N_ISAS; i++)
        if (cpu_has(ISAS[i])) return ISAS[i];
    return &KERNELS_SCALAR;
}

/* ------------------------------------------------------------------ argument helpers */

static const char *GGML_NAMES[] = {
    "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
    "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
    "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8",
    "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
};

static const qtype_info *type_arg(int qtype) {
    const qtype_info *info = qtype_lookup(qtype);
    if (info) return info;
    int named = qtype >= 0 && qtype < (int)(sizeof GGML_NAMES / sizeof GGML_NAMES[0]);
    PyErr_Format(PyExc_ValueError,
                 "GGML tensor type %s (id %d) is not supported by the compiled CPU kernels "
                 "(supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS)",
                 named ? GGML_NAMES[qtype] : "unknown", qtype);
    return NULL;
}

static int row_geometry(const qtype_info *info, Py_ssize_t k, size_t *row_bytes) {
    if (k <= 0 || k > INT32_MAX / 2 || k % info->block_size) {
        PyErr_Format(PyExc_ValueError, "a %s row needs a positive multiple of %d values, got k=%zd",
                     info->name, info->block_size, k);
        return -1;
    }
    *row_bytes = (size_t)(k / info->block_size) * info->type_size;
    return 0;
}

/* the weight bytes: any contiguous buffer, read-only is fine (a memory-mapped file) */
static int weight_arg(PyObject *obj, Py_buffer *view, size_t needed, const qtype_info *info, Py_ssize_t rows) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    if ((size_t)view->len < needed) {
        PyErr_Format(PyExc_ValueError, "block data truncated: %zd rows of %s need %zu bytes, the buffer has %zd",
                     rows, info->name, needed, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* a C-contiguous float32 buffer of 1 or 2 dimensions; *rows, *cols describe it as 2-D */
static int float_arg(PyObject *obj, Py_buffer *view, const char *what, int writable, Py_ssize_t *rows, Py_ssize_t *cols) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s float32 array", what, writable ? ", writable" : "");
        return -1;
    }
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    if (strcmp(fmt, "f") != 0 || view->itemsize != 4) {
        PyErr_Format(PyExc_TypeError, "%s must be float32, got buffer format '%s'", what, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (view->ndim == 1) {
        *rows = 1;
        *cols = view->shape[0];
    } else if (view->ndim == 2) {
        *rows = view->shape[0];
        *cols = view->shape[1];
    } else {
        PyErr_Format(PyExc_ValueError, "%s must have 1 or 2 dimensions, got %d", what, view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int overlaps(const Py_buffer *a, const Py_buffer *b) {
    const char *a0 = a->buf, *b0 = b->buf;
    return a0 < b0 + b->len && b0 < a0 + a->len;
}

/* ------------------------------------------------------------------ qmatmul */

typedef struct {
    dot_kernel kernel;
    const uint8_t *w;
    size_t row_bytes;
    int n_rows, chunk_rows, n_chunks, T;
    const acts *a;
    float *out;
    size_t ldo;
    atomic_int next;
} matmul_job;

/* Rows are handed out in chunks (dynamic: the machine is shared, a fixed split would wait on
 * the slowest core). A chunk keeps its weight rows cache-hot while all T rows use them. Each
 * output element is computed by one kernel call, so the thread count never changes results. */
static void matmul_task(void *arg) {
    matmul_job *job = arg;
    for (;;) {
        int c = atomic_fetch_add(&job->next, 1);
        if (c >= job->n_chunks) return;
        int r0 = c * job->chunk_rows, r1 = r0 + job->chunk_rows < job->n_rows ? r0 + job->chunk_rows : job->n_rows;
        for (int t0 = 0; t0 < job->T; t0 += MAX_NT) {
            int nt = job->T - t0 < MAX_NT ? job->T - t0 : MAX_NT;
            job->kernel(job->w, job->row_bytes, r0, r1, job->a, t0, nt, job->out + (size_t)t0 * job->ldo + r0, job->ldo);
        }
    }
}

typedef struct {
    acts *a;
    const float *x;
    int T;
    atomic_int next;
} quant_job;

#define QUANT_ROWS 8  /* activation rows per work item */

static void quant_task(void *arg) {
    quant_job *job = arg;
    for (;;) {
        int t0 = atomic_fetch_add(&job->next, QUANT_ROWS);
        if (t0 >= job->T) return;
        acts_quantize(job->a, job->x, t0, t0 + QUANT_ROWS < job->T ? t0 + QUANT_ROWS : job->T);
    }
}

#define CHUNK_BYTES (32 * 1024)    /* weight bytes per work chunk */
#define SERIAL_BYTES (64 * 1024)   /* below this much weight x rows, one thread is faster */

static int run_qmatmul(const kernel_set *ks, int qtype, const uint8_t *w, size_t row_bytes, int n_rows, int k,
                       const float *x, int T, float *out, size_t ldo) {
    const qtype_info *info = &QTYPES[qtype];
    acts *a = acts_alloc(info->act, T, k);
    if (!a) return -1;
    int threads = pool_get_threads();
    if (info->act == ACT_F32) {
        a->f32 = x;
    } else {
        quant_job qj = {.a = a, .x = x, .T = T};
        atomic_init(&qj.next, 0);
        pool_run(quant_task, &qj, T >= 16 ? threads : 1);
    }
    matmul_job job = {.kernel = ks->dot[qtype], .w = w, .row_bytes = row_bytes, .n_rows = n_rows, .T = T,
                      .a = a, .out = out, .ldo = ldo};
    int chunk = (int)(CHUNK_BYTES / row_bytes);
    int balanced = (n_rows + 4 * threads - 1) / (4 * threads);
    if (chunk > balanced) chunk = balanced;
    job.chunk_rows = chunk < 1 ? 1 : chunk;
    job.n_chunks = (n_rows + job.chunk_rows - 1) / job.chunk_rows;
    atomic_init(&job.next, 0);
    int serial = (double)n_rows * row_bytes * T < SERIAL_BYTES;
    pool_run(matmul_task, &job, serial ? 1 : threads);
    acts_free(a);
    return 0;
}

static PyObject *py_qmatmul(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"w", "qtype", "n_rows", "k", "x", "out", "out_col", NULL};
    PyObject *w_obj, *x_obj, *out_obj;
    int qtype;
    Py_ssize_t n_rows, k, out_col = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OinnOO|n:qmatmul", kwlist, &w_obj, &qtype, &n_rows, &k,
                                     &x_obj, &out_obj, &out_col))
        return NULL;
    const qtype_info *info = type_arg(qtype);
    size_t row_bytes;
    if (!info || row_geometry(info, k, &row_bytes) < 0) return NULL;
    if (n_rows < 0 || n_rows > INT32_MAX) return PyErr_Format(PyExc_ValueError, "n_rows must be >= 0, got %zd", n_rows);
    Py_buffer wv, xv, ov;
    if (weight_arg(w_obj, &wv, (size_t)n_rows * row_bytes, info, n_rows) < 0) return NULL;
    Py_ssize_t T, xk, oT, on;
    if (float_arg(x_obj, &xv, "x", 0, &T, &xk) < 0) goto fail_w;
    if (float_arg(out_obj, &ov, "out", 1, &oT, &on) < 0) goto fail_x;
    if (xk != k) {
        PyErr_Format(PyExc_ValueError, "x has rows of %zd values, the weight has k=%zd", xk, k);
        goto fail_o;
    }
    if (oT != T || out_col < 0 || on < out_col + n_rows) {
        PyErr_Format(PyExc_ValueError, "out must be [T=%zd, N >= out_col + n_rows = %zd], got [%zd, %zd] (out_col=%zd)",
                     T, out_col + n_rows, oT, on, out_col);
        goto fail_o;
    }
    if (T > INT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "too many rows in x");
        goto fail_o;
    }
    if (overlaps(&xv, &ov)) {
        PyErr_SetString(PyExc_ValueError, "out must not share memory with x");
        goto fail_o;
    }
    int rc = 0;
    if (T > 0 && n_rows > 0) {
        const kernel_set *ks = active;
        Py_BEGIN_ALLOW_THREADS
        rc = run_qmatmul(ks, qtype, wv.buf, row_bytes, (int)n_rows, (int)k, xv.buf, (int)T,
                         (float *)ov.buf + out_col, (size_t)on);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&ov);
    PyBuffer_Release(&xv);
    PyBuffer_Release(&wv);
    if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
fail_o:
    PyBuffer_Release(&ov);
fail_x:
    PyBuffer_Release(&xv);
fail_w:
    PyBuffer_Release(&wv);
    return NULL;
}

/* ------------------------------------------------------------------ dequant_rows */

typedef struct {
    int qtype, k, r0, r1, chunk_rows;
    const uint8_t *w;
    size_t row_bytes;
    float *out;
    atomic_int next;
} dequant_job;

static void dequant_task(void *arg) {
    dequant_job *job = arg;
    for (;;) {
        int a = job->r0 + atomic_fetch_add(&job->next, job->chunk_rows);
        if (a >= job->r1) return;
        int b = a + job->chunk_rows < job->r1 ? a + job->chunk_rows : job->r1;
        dequant_rows(job->qtype, job->w, job->row_bytes, job->k, a, b, job->out + (size_t)(a - job->r0) * job->k);
    }
}

static PyObject *py_dequant_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *w_obj, *out_obj;
    int qtype;
    Py_ssize_t k, r0, r1;
    if (!PyArg_ParseTuple(args, "OinnnO:dequant_rows", &w_obj, &qtype, &k, &r0, &r1, &out_obj)) return NULL;
    const qtype_info *info = type_arg(qtype);
    size_t row_bytes;
    if (!info || row_geometry(info, k, &row_bytes) < 0) return NULL;
    if (r0 < 0 || r1 < r0 || r1 > INT32_MAX)
        return PyErr_Format(PyExc_ValueError, "need 0 <= row0 <= row1, got %zd, %zd", r0, r1);
    Py_buffer wv, ov;
    if (weight_arg(w_obj, &wv, (size_t)r1 * row_bytes, info, r1) < 0) return NULL;
    Py_ssize_t rows, cols;
    if (float_arg(out_obj, &ov, "out", 1, &rows, &cols) < 0) {
        PyBuffer_Release(&wv);
        return NULL;
    }
    if (rows * cols != (r1 - r0) * k) {
        PyErr_Format(PyExc_ValueError, "out must hold %zd x %zd float32 values, got %zd", r1 - r0, k, rows * cols);
        PyBuffer_Release(&ov);
        PyBuffer_Release(&wv);
        return NULL;
    }
    int chunk = (int)((1 << 14) / k);  /* 64 KB of output per work item */
    dequant_job job = {.qtype = qtype, .k = (int)k, .r0 = (int)r0, .r1 = (int)r1, .chunk_rows = chunk < 1 ? 1 : chunk,
                       .w = wv.buf, .row_bytes = row_bytes, .out = ov.buf};
    atomic_init(&job.next, 0);
    int threads = (r1 - r0) * k >= (1 << 16) ? pool_get_threads() : 1;
    Py_BEGIN_ALLOW_THREADS
    pool_run(dequant_task, &job, threads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&ov);
    PyBuffer_Release(&wv);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ small API */

static PyObject *py_set_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > POOL_MAX_THREADS)
        return PyErr_Format(PyExc_ValueError, "threads must be in 1..%d, got %ld", POOL_MAX_THREADS, n);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pool_set_threads((int)n);
    Py_END_ALLOW_THREADS
    if (rc < 0) return PyErr_Format(PyExc_ValueError, "cannot use %ld threads", n);
    Py_RETURN_NONE;
}

static PyObject *py_get_threads(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(pool_get_threads());
}

static PyObject *py_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(active->name);
}

static PyObject *py_available_isas(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *names = PyList_New(0);
    for (int i = 0; names && i < N_ISAS; i++) {
        if (!cpu_has(ISAS[i])) continue;
        PyObject *s = PyUnicode_FromString(ISAS[i]->name);
        if (!s || PyList_Append(names, s) < 0) Py_CLEAR(names);
        Py_XDECREF(s);
    }
    if (!names) return NULL;
    PyObject *t = PyList_AsTuple(names);
    Py_DECREF(names);
    return t;
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const kernel_set *ks = isa_named(name);
    if (!ks) return PyErr_Format(PyExc_ValueError, "unknown ISA '%s' (known: avx512vnni, avx2, scalar)", name);
    if (!cpu_has(ks)) return PyErr_Format(PyExc_ValueError, "this CPU lacks the instructions of ISA '%s'", name);
    active = ks;
    Py_RETURN_NONE;
}

static PyObject *py_supported_types(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *ids = PyList_New(0);
    for (int q = 0; ids && q < QT_COUNT; q++) {
        if (!qtype_lookup(q)) continue;
        PyObject *v = PyLong_FromLong(q);
        if (!v || PyList_Append(ids, v) < 0) Py_CLEAR(ids);
        Py_XDECREF(v);
    }
    if (!ids) return NULL;
    PyObject *t = PyList_AsTuple(ids);
    Py_DECREF(ids);
    return t;
}

static PyMethodDef methods[] = {
    {"qmatmul", (PyCFunction)(void (*)(void))py_qmatmul, METH_VARARGS | METH_KEYWORDS,
     "qmatmul(w, qtype, n_rows, k, x, out, out_col=0)\n--\n\n"
     "out[:, out_col:out_col+n_rows] = x @ W.T for W = n_rows rows of k values of GGML type qtype\n"
     "stored in the bytes-like w (read-only is fine); x float32 [T, k], out float32 [T, N]."},
    {"dequant_rows", py_dequant_rows, METH_VARARGS,
     "dequant_rows(w, qtype, k, row0, row1, out)\n--\n\n"
     "out (float32, (row1-row0)*k values) = rows row0..row1-1 of W dequantized."},
    {"set_threads", py_set_threads, METH_O, "set_threads(n)\n--\n\nUse n threads (the caller included)."},
    {"get_threads", py_get_threads, METH_NOARGS, "get_threads()\n--\n\nThreads in use, the caller included."},
    {"isa", py_isa, METH_NOARGS, "isa()\n--\n\nThe kernel variant in use: 'avx512vnni', 'avx2' or 'scalar'."},
    {"available_isas", py_available_isas, METH_NOARGS,
     "available_isas()\n--\n\nThe kernel variants this CPU can run, best first."},
    {"set_isa", py_set_isa, METH_O, "set_isa(name)\n--\n\nSwitch to a kernel variant this CPU supports."},
    {"supported_types", py_supported_types, METH_NOARGS,
     "supported_types()\n--\n\nGGML type ids the kernels handle."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kernels._cpu",
    "Compiled CPU kernels for GGUF weights kept in their stored (quantized) form.", -1, methods,
    NULL, NULL, NULL, NULL,
};

static int default_threads(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n >= 1) return n < POOL_MAX_THREADS ? n : POOL_MAX_THREADS;
    }
    return 1;
}

PyMODINIT_FUNC PyInit__cpu(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    active = best_isa();
    const char *env = getenv("AGENTD_CPU_ISA");
    if (env && *env) {
        const kernel_set *ks = isa_named(env);
        if (!ks) {
            if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "AGENTD_CPU_ISA=%s is not one of avx512vnni, avx2, scalar; using %s",
                                 env, active->name) < 0) {
                Py_DECREF(m);
                return NULL;
            }
        } else {
            /* never above what the CPU has: fall to the best supported variant at or below it */
            int i = 0;
            while (ISAS[i] != ks) i++;
            while (i < N_ISAS - 1 && !cpu_has(ISAS[i])) i++;
            active = ISAS[i];
        }
    }
    pool_set_threads(default_threads());
    return m;
}
