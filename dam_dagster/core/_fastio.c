/* The prefix pass of the duplicate finder in C: open, read the first min(size, 4 KiB) bytes,
 * XXH64, close, for a batch of files, with the GIL released for the whole batch.
 *
 * Optional: core/hashing.py does exactly the same in Python when this module is not built
 * (no compiler where the package was installed), and dam_dagster_tests/test_hashing.py checks
 * that both give the same outcome for every file, failures included. Why it exists: a first
 * run on a million small files is mostly this loop, and in Python each file costs ~3 us of
 * interpreter beside the ~5 us its system calls take (docs/BENCHMARKS.md).
 *
 * XXH64 is written from its specification (github.com/Cyan4973/xxHash, doc/xxhash_spec.md),
 * seed 0, the value the `xxhash` package's xxh64_hexdigest gives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define PREFIX_BYTES 4096

static const uint64_t P1 = 0x9E3779B185EBCA87ULL;
static const uint64_t P2 = 0xC2B2AE3D27D4EB4FULL;
static const uint64_t P3 = 0x165667B19E3779F9ULL;
static const uint64_t P4 = 0x85EBCA77C2B2AE63ULL;
static const uint64_t P5 = 0x27D4EB2F165667C5ULL;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t read64(const unsigned char *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

static inline uint64_t read32(const unsigned char *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24);
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t lane) {
    acc += lane * P2;
    acc = rotl64(acc, 31);
    return acc * P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t v) {
    acc ^= xxh_round(0, v);
    return acc * P1 + P4;
}

static uint64_t xxh64(const unsigned char *p, size_t len) {
    const unsigned char *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = P1 + P2, v2 = P2, v3 = 0, v4 = (uint64_t)0 - P1;
        while (p + 32 <= end) {
            v1 = xxh_round(v1, read64(p));
            v2 = xxh_round(v2, read64(p + 8));
            v3 = xxh_round(v3, read64(p + 16));
            v4 = xxh_round(v4, read64(p + 24));
            p += 32;
        }
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xxh_round(0, read64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= read32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl64(h, 11) * P1;
        p++;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/* One file: 0 and the hash, an errno, or -1 when it ends before `want` bytes. */
static int prefix_one(const char *path, long long size, int flags, int advise, uint64_t *out,
                      long long *nread) {
    unsigned char buf[PREFIX_BYTES];
    size_t want = size < PREFIX_BYTES ? (size_t)(size < 0 ? 0 : size) : PREFIX_BYTES;
    int fd;
#ifdef O_NOATIME
    /* O_NOATIME needs ownership of the file (EPERM otherwise): open without it then */
    fd = open(path, flags | O_NOATIME);
    if (fd < 0 && (errno == EPERM || errno == EACCES))
        fd = open(path, flags);
#else
    fd = open(path, flags);
#endif
    if (fd < 0)
        return errno;
#ifdef POSIX_FADV_RANDOM
    if (advise)
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
#endif
    size_t got = 0;
    int code = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            code = errno;
            break;
        }
        if (n == 0) {
            code = -1;
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    if (code == 0) {
        *out = xxh64(buf, want);
        *nread = (long long)want;
    }
    return code;
}

PyDoc_STRVAR(prefix_hashes_doc,
             "prefix_hashes(paths, sizes, follow_symlinks, advise) -> (hashes, codes)\n\n"
             "For each path (str, surrogate escapes allowed, or bytes) and the size the walk saw:\n"
             "XXH64 of its first min(size, 4096) bytes as 16 hexadecimal digits and code 0; or\n"
             "None and an errno, or -1 when the file ends sooner. Opened read-only, non-blocking,\n"
             "close-on-exec, O_NOATIME where allowed, without following a link unless asked;\n"
             "`advise`: POSIX_FADV_RANDOM (no readahead). The GIL is released meanwhile.");

static PyObject *prefix_hashes(PyObject *self, PyObject *args) {
    PyObject *paths_arg, *sizes_arg;
    int follow = 0, advise = 0;
    if (!PyArg_ParseTuple(args, "OO|pp", &paths_arg, &sizes_arg, &follow, &advise))
        return NULL;
    PyObject *paths = PySequence_Fast(paths_arg, "paths must be a sequence");
    if (paths == NULL)
        return NULL;
    PyObject *sizes = PySequence_Fast(sizes_arg, "sizes must be a sequence");
    if (sizes == NULL) {
        Py_DECREF(paths);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(paths);
    PyObject *result = NULL, *hashes = NULL, *codes = NULL;
    PyObject **encoded = NULL;
    const char **cpaths = NULL;
    long long *csizes = NULL, *nread = NULL;
    uint64_t *digests = NULL;
    int *status = NULL;
    Py_ssize_t made = 0;
    if (PySequence_Fast_GET_SIZE(sizes) != n) {
        PyErr_SetString(PyExc_ValueError, "paths and sizes differ in length");
        goto done;
    }
    encoded = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    cpaths = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    csizes = PyMem_Calloc((size_t)n + 1, sizeof(long long));
    nread = PyMem_Calloc((size_t)n + 1, sizeof(long long));
    digests = PyMem_Calloc((size_t)n + 1, sizeof(uint64_t));
    status = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (!encoded || !cpaths || !csizes || !nread || !digests || !status) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++, made++) {
        PyObject *item = PySequence_Fast_GET_ITEM(paths, i);
        if (!PyUnicode_FSConverter(item, &encoded[i]))
            goto done;
        cpaths[i] = PyBytes_AS_STRING(encoded[i]);
        csizes[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sizes, i));
        if (csizes[i] == -1 && PyErr_Occurred())
            goto done;
    }
    int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        status[i] = prefix_one(cpaths[i], csizes[i], flags, advise, &digests[i], &nread[i]);
    Py_END_ALLOW_THREADS
    hashes = PyList_New(n);
    codes = PyList_New(n);
    if (hashes == NULL || codes == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h, *c;
        if (status[i] == 0) {
            char hex[17];
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)digests[i]);
            h = PyUnicode_FromStringAndSize(hex, 16);
        } else {
            h = Py_NewRef(Py_None);
        }
        c = PyLong_FromLong(status[i]);
        if (h == NULL || c == NULL) {
            Py_XDECREF(h);
            Py_XDECREF(c);
            goto done;
        }
        PyList_SET_ITEM(hashes, i, h);
        PyList_SET_ITEM(codes, i, c);
    }
    result = PyTuple_Pack(2, hashes, codes);
done:
    if (encoded != NULL)
        for (Py_ssize_t i = 0; i < made; i++)
            Py_XDECREF(encoded[i]);
    PyMem_Free(encoded);
    PyMem_Free(cpaths);
    PyMem_Free(csizes);
    PyMem_Free(nread);
    PyMem_Free(digests);
    PyMem_Free(status);
    Py_XDECREF(hashes);
    Py_XDECREF(codes);
    Py_DECREF(paths);
    Py_DECREF(sizes);
    return result;
}

PyDoc_STRVAR(xxh64_hex_doc, "xxh64_hex(data: bytes) -> str: XXH64 (seed 0), 16 hex digits.");

static PyObject *xxh64_hex(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t h = xxh64((const unsigned char *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    return PyUnicode_FromStringAndSize(hex, 16);
}

static PyMethodDef methods[] = {
    {"prefix_hashes", prefix_hashes, METH_VARARGS, prefix_hashes_doc},
    {"xxh64_hex", xxh64_hex, METH_O, xxh64_hex_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastio",
    "The prefix pass in C (core/hashing.py has the same in Python).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastio(void) { return PyModule_Create(&module); }
