/* kernels._fused: Python entry points of the fused decode-step ops.
 *
 * Every array argument goes through `acquire`, which checks dtype, C-contiguity, shape and
 * (for outputs) writability, and `check_overlaps`, which refuses an output sharing memory with
 * any other argument; bad input raises ValueError before any memory is touched. The math runs
 * without the GIL in the variant chosen at import (fused.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdio.h>

#include "fused.h"

#define MAX_ARRAYS 10
#define MAX_DIM ((Py_ssize_t)1 << 20) /* bound on head counts and sizes, so index products cannot overflow */

static const fused_ops *ops = &fused_ops_generic;

static int cpu_has_avx2(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* The arrays one call holds, released together. */
typedef struct {
    const char *fn;
    int n;
    Py_buffer view[MAX_ARRAYS];
    const char *name[MAX_ARRAYS];
    int writable[MAX_ARRAYS]; /* as requested: numpy reports its own flag, not the request */
} arrays;

static void release(arrays *a) {
    for (int i = 0; i < a->n; i++) PyBuffer_Release(&a->view[i]);
    a->n = 0;
}

static void shape_str(char *out, size_t size, int ndim, const Py_ssize_t *shape) {
    size_t used = (size_t)snprintf(out, size, "(");
    for (int i = 0; i < ndim && used < size; i++)
        used += shape[i] < 0 ? (size_t)snprintf(out + used, size - used, "%s*", i ? ", " : "")
                             : (size_t)snprintf(out + used, size - used, "%s%zd", i ? ", " : "", shape[i]);
    if (used < size) snprintf(out + used, size - used, ")");
}

static int format_is(const char *format, char code) {
    if (!format) return 0;
    if (format[0] == '@' || format[0] == '=' || format[0] == (PY_LITTLE_ENDIAN ? '<' : '>')) format++;
    return format[0] == code && format[1] == '\0';
}

/* Take obj as a C-contiguous array of `code` ('f' float32, 'd' float64) with `ndim` dims
 * (ndim < 0: any, at least one) and the given shape (entries < 0 are free; shape may be NULL
 * when ndim < 0). Returns the view, or NULL with ValueError set. */
static Py_buffer *acquire(arrays *a, PyObject *obj, const char *name, char code, int writable, int ndim,
                          const Py_ssize_t *shape) {
    Py_buffer *v = &a->view[a->n];
    const char *dtype = code == 'f' ? "float32" : "float64";
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: %s must be a %sC-contiguous %s array", a->fn, name,
                     writable ? "writable " : "", dtype);
        return NULL;
    }
    a->name[a->n] = name;
    a->writable[a->n++] = writable;
    if (!format_is(v->format, code) || v->itemsize != (code == 'f' ? 4 : 8)) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be %s, got buffer format '%s'", a->fn, name, dtype,
                     v->format ? v->format : "B");
        return NULL;
    }
    int ok = ndim < 0 ? v->ndim >= 1 : v->ndim == ndim;
    for (int i = 0; ok && ndim >= 0 && i < ndim; i++) ok = shape[i] < 0 || v->shape[i] == shape[i];
    if (!ok) {
        char want[160], got[160];
        if (ndim < 0) snprintf(want, sizeof want, "at least one dimension");
        else shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, v->ndim, v->shape);
        PyErr_Format(PyExc_ValueError, "%s: %s must have shape %s, got %s", a->fn, name, want, got);
        return NULL;
    }
    return v;
}

/* An output that shares memory with another argument would be read after being overwritten. */
static int check_overlaps(arrays *a) {
    for (int i = 0; i < a->n; i++)
        for (int j = i + 1; j < a->n; j++) {
            if (!a->writable[i] && !a->writable[j]) continue;
            const Py_buffer *x = &a->view[i], *y = &a->view[j];
            const char *x0 = x->buf, *y0 = y->buf;
            if (x->len > 0 && y->len > 0 && x0 < y0 + y->len && y0 < x0 + x->len) {
                PyErr_Format(PyExc_ValueError, "%s: %s and %s share memory; outputs need their own arrays", a->fn,
                             a->name[i], a->name[j]);
                return -1;
            }
        }
    return 0;
}

static int check_dim(const char *fn, const char *name, Py_ssize_t value, Py_ssize_t low) {
    if (value < low || value > MAX_DIM) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be in [%zd, %zd], got %zd", fn, name, low, MAX_DIM, value);
        return -1;
    }
    return 0;
}

static int check_eps(const char *fn, double eps) {
    if (!(eps >= 0.0 && eps < 1.0)) {
        char text[64];
        snprintf(text, sizeof text, "%g", eps);
        PyErr_Format(PyExc_ValueError, "%s: eps must be in [0, 1), got %s", fn, text);
        return -1;
    }
    return 0;
}

#define F(view) ((float *)(view)->buf)

/* End of a call: release the arrays; status 0 -> None, 1 -> out of memory, -1 -> the error set. */
static PyObject *done(arrays *a, int status) {
    release(a);
    if (status > 0) return PyErr_NoMemory();
    if (status < 0) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(gated_delta_net_doc,
             "gated_delta_net(proj, conv_w, dt_bias, a, norm_w, conv_state, ssm_state, y, hk, hv, d, eps)\n--\n\n"
             "Gated DeltaNet mixer for T = proj.shape[0] tokens, one after another (recurrent form).\n"
             "proj [T, C + Vd + 2 hv] (C = 2 hk d + Vd, Vd = hv d) holds qkv | z | beta logits | alpha;\n"
             "conv_w [C, K], dt_bias [hv], a [hv] (= -exp(A_log)), norm_w [d]. conv_state [K-1, C] and\n"
             "ssm_state [hv, d, d] are updated in place; y [T, Vd] receives rms_norm(o) * silu(z).\n"
             "V head h reads K head h % hk. All arrays float32 C-contiguous; outputs must not overlap inputs.");

static PyObject *py_gated_delta_net(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kw[] = {"proj", "conv_w", "dt_bias", "a", "norm_w", "conv_state", "ssm_state", "y", "hk", "hv", "d", "eps", NULL};
    PyObject *o_proj, *o_conv_w, *o_dt_bias, *o_a, *o_norm_w, *o_conv_state, *o_ssm_state, *o_y;
    Py_ssize_t hk, hv, d;
    double eps;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOnnnd:gated_delta_net", kw, &o_proj, &o_conv_w, &o_dt_bias,
                                     &o_a, &o_norm_w, &o_conv_state, &o_ssm_state, &o_y, &hk, &hv, &d, &eps))
        return NULL;
    arrays a = {.fn = "gated_delta_net"};
    if (check_dim(a.fn, "hk", hk, 1) || check_dim(a.fn, "hv", hv, 1) || check_dim(a.fn, "d", d, 1) || check_eps(a.fn, eps))
        return NULL;
    const Py_ssize_t vd = hv * d, C = 2 * hk * d + vd;
    Py_buffer *proj, *conv_w, *dt_bias, *sa, *norm_w, *conv_state, *ssm_state, *y;
    if (!(proj = acquire(&a, o_proj, "proj", 'f', 0, 2, (Py_ssize_t[]){-1, C + vd + 2 * hv}))) goto fail;
    const Py_ssize_t T = proj->shape[0];
    if (!(conv_w = acquire(&a, o_conv_w, "conv_w", 'f', 0, 2, (Py_ssize_t[]){C, -1}))) goto fail;
    const Py_ssize_t K = conv_w->shape[1];
    if (K < 1) {
        PyErr_SetString(PyExc_ValueError, "gated_delta_net: conv_w needs at least one tap");
        goto fail;
    }
    if (!(dt_bias = acquire(&a, o_dt_bias, "dt_bias", 'f', 0, 1, (Py_ssize_t[]){hv})) ||
        !(sa = acquire(&a, o_a, "a", 'f', 0, 1, (Py_ssize_t[]){hv})) ||
        !(norm_w = acquire(&a, o_norm_w, "norm_w", 'f', 0, 1, (Py_ssize_t[]){d})) ||
        !(conv_state = acquire(&a, o_conv_state, "conv_state", 'f', 1, 2, (Py_ssize_t[]){K - 1, C})) ||
        !(ssm_state = acquire(&a, o_ssm_state, "ssm_state", 'f', 1, 3, (Py_ssize_t[]){hv, d, d})) ||
        !(y = acquire(&a, o_y, "y", 'f', 1, 2, (Py_ssize_t[]){T, vd})) || check_overlaps(&a))
        goto fail;
    gdn_call call = {
        .proj = F(proj), .conv_w = F(conv_w), .dt_bias = F(dt_bias), .a = F(sa), .norm_w = F(norm_w),
        .conv_state = F(conv_state), .ssm_state = F(ssm_state), .y = F(y),
        .T = T, .hk = hk, .hv = hv, .d = d, .K = K, .eps = (float)eps,
    };
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ops->gated_delta_net(&call);
    Py_END_ALLOW_THREADS return done(&a, rc ? 1 : 0);
fail:
    return done(&a, -1);
}

PyDoc_STRVAR(gated_attention_doc,
             "gated_attention(proj, q_norm, k_norm, k_buf, v_buf, position, n_head, n_kv, hd, rope_dims, inv_freq, eps, y)\n--\n\n"
             "Gated full attention for T = proj.shape[0] tokens at positions position .. position+T-1.\n"
             "proj [T, 2 n_head hd + 2 n_kv hd] holds (query | gate) per head | k | v. q, k are RMS-normed\n"
             "(q_norm, k_norm [hd]) and NEOX-roped on the first rope_dims dims (inv_freq [rope_dims/2]\n"
             "float64); k, v are written into rows position.. of the head-major KV cache k_buf, v_buf\n"
             "[n_kv, capacity, hd]; y [T, n_head hd] receives causal GQA attention * sigmoid(gate).");

static PyObject *py_gated_attention(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kw[] = {"proj", "q_norm", "k_norm", "k_buf", "v_buf", "position", "n_head", "n_kv", "hd",
                         "rope_dims", "inv_freq", "eps", "y", NULL};
    PyObject *o_proj, *o_q_norm, *o_k_norm, *o_k_buf, *o_v_buf, *o_inv_freq, *o_y;
    Py_ssize_t position, n_head, n_kv, hd, rope_dims;
    double eps;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOnnnnnOdO:gated_attention", kw, &o_proj, &o_q_norm, &o_k_norm,
                                     &o_k_buf, &o_v_buf, &position, &n_head, &n_kv, &hd, &rope_dims, &o_inv_freq, &eps, &o_y))
        return NULL;
    arrays a = {.fn = "gated_attention"};
    if (check_dim(a.fn, "n_head", n_head, 1) || check_dim(a.fn, "n_kv", n_kv, 1) || check_dim(a.fn, "hd", hd, 1) ||
        check_dim(a.fn, "rope_dims", rope_dims, 0) || check_eps(a.fn, eps))
        return NULL;
    if (n_head % n_kv || rope_dims % 2 || rope_dims > hd) {
        PyErr_Format(PyExc_ValueError, "gated_attention: need n_head %% n_kv == 0 and an even rope_dims <= hd (got %zd, %zd, %zd, %zd)",
                     n_head, n_kv, rope_dims, hd);
        return NULL;
    }
    if (position < 0) {
        PyErr_Format(PyExc_ValueError, "gated_attention: position must be >= 0, got %zd", position);
        return NULL;
    }
    Py_buffer *proj, *q_norm, *k_norm, *k_buf, *v_buf, *inv_freq, *y;
    if (!(proj = acquire(&a, o_proj, "proj", 'f', 0, 2, (Py_ssize_t[]){-1, 2 * n_head * hd + 2 * n_kv * hd}))) goto fail;
    const Py_ssize_t T = proj->shape[0];
    if (!(q_norm = acquire(&a, o_q_norm, "q_norm", 'f', 0, 1, (Py_ssize_t[]){hd})) ||
        !(k_norm = acquire(&a, o_k_norm, "k_norm", 'f', 0, 1, (Py_ssize_t[]){hd})) ||
        !(k_buf = acquire(&a, o_k_buf, "k_buf", 'f', 1, 3, (Py_ssize_t[]){n_kv, -1, hd})))
        goto fail;
    const Py_ssize_t capacity = k_buf->shape[1];
    if (!(v_buf = acquire(&a, o_v_buf, "v_buf", 'f', 1, 3, (Py_ssize_t[]){n_kv, capacity, hd})) ||
        !(inv_freq = acquire(&a, o_inv_freq, "inv_freq", 'd', 0, 1, (Py_ssize_t[]){rope_dims / 2})) ||
        !(y = acquire(&a, o_y, "y", 'f', 1, 2, (Py_ssize_t[]){T, n_head * hd})) || check_overlaps(&a))
        goto fail;
    if (position > capacity - T) {
        PyErr_Format(PyExc_ValueError, "gated_attention: KV capacity %zd cannot hold positions %zd..%zd", capacity,
                     position, position + T - 1);
        goto fail;
    }
    attn_call call = {
        .proj = F(proj), .q_norm = F(q_norm), .k_norm = F(k_norm), .inv_freq = (const double *)inv_freq->buf,
        .k_buf = F(k_buf), .v_buf = F(v_buf), .y = F(y), .T = T, .position = position, .capacity = capacity,
        .n_head = n_head, .n_kv = n_kv, .hd = hd, .rope_dims = rope_dims, .eps = (float)eps,
    };
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = ops->gated_attention(&call);
    Py_END_ALLOW_THREADS return done(&a, rc ? 1 : 0);
fail:
    return done(&a, -1);
}

/* x [..., n] seen as rows x n, and its per-column weight w [n]. */
static Py_buffer *acquire_rows(arrays *a, PyObject *x_obj, const char *x_name, int x_writable, PyObject *w_obj,
                               Py_buffer **w, Py_ssize_t *rows, Py_ssize_t *n) {
    Py_buffer *x = acquire(a, x_obj, x_name, 'f', x_writable, -1, NULL);
    if (!x) return NULL;
    *n = x->shape[x->ndim - 1];
    *rows = *n ? x->len / 4 / *n : 0;
    return (*w = acquire(a, w_obj, "w", 'f', 0, 1, (Py_ssize_t[]){*n})) ? x : NULL;
}

PyDoc_STRVAR(rms_norm_doc, "rms_norm(x, w, eps, out)\n--\n\nout = x / sqrt(mean(x^2, last axis) + eps) * w; x, out [..., n], w [n].");

static PyObject *py_rms_norm(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kw[] = {"x", "w", "eps", "out", NULL};
    PyObject *o_x, *o_w, *o_out;
    double eps;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOdO:rms_norm", kw, &o_x, &o_w, &eps, &o_out)) return NULL;
    arrays a = {.fn = "rms_norm"};
    if (check_eps(a.fn, eps)) return NULL;
    Py_ssize_t rows, n;
    Py_buffer *w, *out, *x = acquire_rows(&a, o_x, "x", 0, o_w, &w, &rows, &n);
    if (!x || !(out = acquire(&a, o_out, "out", 'f', 1, x->ndim, x->shape)) || check_overlaps(&a)) goto fail;
    Py_BEGIN_ALLOW_THREADS ops->rms_norm(F(x), F(w), F(out), rows, n, (float)eps);
    Py_END_ALLOW_THREADS return done(&a, 0);
fail:
    return done(&a, -1);
}

PyDoc_STRVAR(add_rms_norm_doc,
             "add_rms_norm(h, y, w, eps, out)\n--\n\n"
             "The residual step: h += y in place, then out = rms_norm(h, w, eps); h, y, out [..., n], w [n].");

static PyObject *py_add_rms_norm(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kw[] = {"h", "y", "w", "eps", "out", NULL};
    PyObject *o_h, *o_y, *o_w, *o_out;
    double eps;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOdO:add_rms_norm", kw, &o_h, &o_y, &o_w, &eps, &o_out)) return NULL;
    arrays a = {.fn = "add_rms_norm"};
    if (check_eps(a.fn, eps)) return NULL;
    Py_ssize_t rows, n;
    Py_buffer *w, *y, *out, *h = acquire_rows(&a, o_h, "h", 1, o_w, &w, &rows, &n);
    if (!h || !(y = acquire(&a, o_y, "y", 'f', 0, h->ndim, h->shape)) ||
        !(out = acquire(&a, o_out, "out", 'f', 1, h->ndim, h->shape)) || check_overlaps(&a))
        goto fail;
    Py_BEGIN_ALLOW_THREADS ops->add_rms_norm(F(h), F(y), F(w), F(out), rows, n, (float)eps);
    Py_END_ALLOW_THREADS return done(&a, 0);
fail:
    return done(&a, -1);
}

PyDoc_STRVAR(swiglu_doc, "swiglu(gu, out)\n--\n\nout = silu(gu[..., :n]) * gu[..., n:] for gu [..., 2n], out [..., n].");

static PyObject *py_swiglu(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kw[] = {"gu", "out", NULL};
    PyObject *o_gu, *o_out;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:swiglu", kw, &o_gu, &o_out)) return NULL;
    arrays a = {.fn = "swiglu"};
    Py_buffer *gu = acquire(&a, o_gu, "gu", 'f', 0, -1, NULL), *out;
    if (!gu) goto fail;
    const Py_ssize_t width = gu->shape[gu->ndim - 1];
    if (width % 2) {
        PyErr_Format(PyExc_ValueError, "swiglu: gu's last dimension must be even, got %zd", width);
        goto fail;
    }
    Py_ssize_t shape[PyBUF_MAX_NDIM];
    memcpy(shape, gu->shape, sizeof(Py_ssize_t) * (size_t)gu->ndim);
    shape[gu->ndim - 1] = width / 2;
    if (!(out = acquire(&a, o_out, "out", 'f', 1, gu->ndim, shape)) || check_overlaps(&a)) goto fail;
    const Py_ssize_t rows = width ? gu->len / 4 / width : 0;
    Py_BEGIN_ALLOW_THREADS ops->swiglu(F(gu), F(out), rows, width / 2);
    Py_END_ALLOW_THREADS return done(&a, 0);
fail:
    return done(&a, -1);
}

PyDoc_STRVAR(isa_doc, "isa() -> str\n--\n\nThe instruction-set variant in use: 'avx2' or 'generic'.");

static PyObject *py_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(ops->name); }

PyDoc_STRVAR(set_isa_doc,
             "set_isa(name)\n--\n\nUse the 'generic' or 'avx2' variant (import picks the best the CPU has); for tests and "
             "benchmarks. ValueError if the CPU lacks it.");

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (name && strcmp(name, "generic") == 0) ops = &fused_ops_generic;
    else if (name && strcmp(name, "avx2") == 0 && cpu_has_avx2()) ops = &fused_ops_avx2;
    else {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "set_isa: %R is not 'generic' or a variant this CPU supports ('avx2': %s)", arg,
                     cpu_has_avx2() ? "yes" : "no");
        return NULL;
    }
    Py_RETURN_NONE;
}

#define KW_METHOD(name) {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, name##_doc}

static PyMethodDef methods[] = {
    KW_METHOD(gated_delta_net),
    KW_METHOD(gated_attention),
    KW_METHOD(rms_norm),
    KW_METHOD(add_rms_norm),
    KW_METHOD(swiglu),
    {"isa", py_isa, METH_NOARGS, isa_doc},
    {"set_isa", py_set_isa, METH_O, set_isa_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kernels._fused",
    "Fused per-token ops of a Qwen3.5 decode step (float32, in place, GIL released).", -1, methods,
};

PyMODINIT_FUNC PyInit__fused(void) {
    if (cpu_has_avx2()) ops = &fused_ops_avx2;
    return PyModule_Create(&module);
}
