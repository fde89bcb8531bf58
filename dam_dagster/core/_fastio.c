/* The two loops a first run spends its time in, in C: the prefix pass of the duplicate finder
 * (open, read the first min(size, 4 KiB) bytes, XXH64, close, for a batch of files) and the
 * listing of one folder of the walk (names, types, an lstat of each file), the GIL released.
 *
 * Optional: core/hashing.py and core/walk.py do the same in Python when this module is not
 * built (no compiler where the package was installed), and the tests check that both give
 * the same outcome for every file and entry, failures included. Why it exists: a first run on
 * a million small files is mostly these two loops, and in Python each file costs ~3 us of
 * interpreter beside the ~5 us its system calls take (docs/BENCHMARKS.md).
 *
 * XXH64 is written from its specification (github.com/Cyan4973/xxHash, doc/xxhash_spec.md),
 * seed 0, the value the `xxhash` package's xxh64_hexdigest gives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
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

/* The folder is opened only to name files relative to it: O_PATH where there is one, which
 * looks the folder up without opening it (on a share, no OPENDIR round trip per folder: the
 * test share counted 7,516 more requests for the 34,249-file library without it) */
#ifdef O_PATH
#define FOLDER_FLAGS (O_PATH | O_DIRECTORY | O_CLOEXEC)
#else
#define FOLDER_FLAGS (O_RDONLY | O_DIRECTORY | O_CLOEXEC)
#endif

/* One file: 0 and the hash, an errno, or -1 when it ends before `want` bytes. */
/* The folder of the previous file, kept open: files come in path order, so most share it,
 * and opening a name relative to it spares the kernel a lookup of every folder of the path. */
typedef struct {
    int fd;     /* -1 when the folder could not be opened (or none yet) */
    size_t len; /* the length of `path`; SIZE_MAX before the first folder */
    char path[4096];
} folder_t;

/* open(2) and openat(2) again when a signal interrupts them (a share can be slow enough for
 * one to arrive), as Python's os.open does */
static int open_again(const char *path, int flags) {
    int fd;
    do
        fd = open(path, flags);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static int openat_again(int dirfd, const char *name, int flags) {
    int fd;
    do
        fd = openat(dirfd, name, flags);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static int open_in(folder_t *dir, const char *path, int flags) {
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash - path) : 0;
    /* a whole path of PATH_MAX or more: what open(2) says of it (ENAMETOOLONG), as in Python,
     * though the name alone would open relative to its folder */
    if (slash == NULL || len == 0 || len >= sizeof dir->path || strlen(path) >= PATH_MAX)
        return open_again(path, flags);
    if (dir->len != len || memcmp(dir->path, path, len) != 0) {
        if (dir->fd >= 0)
            close(dir->fd);
        memcpy(dir->path, path, len);
        dir->path[len] = 0;
        dir->len = len; /* a folder that cannot be opened is not tried again for each file */
        dir->fd = open_again(dir->path, FOLDER_FLAGS);
    }
    if (dir->fd < 0)
        return open_again(path, flags); /* say what the path itself gives */
    return openat_again(dir->fd, slash + 1, flags);
}

static int prefix_one(folder_t *dir, const char *path, long long size, int flags, int advise,
                      uint64_t *out, long long *nread) {
    unsigned char buf[PREFIX_BYTES];
    size_t want = size < PREFIX_BYTES ? (size_t)(size < 0 ? 0 : size) : PREFIX_BYTES;
    int fd;
#ifdef O_NOATIME
    /* O_NOATIME needs ownership of the file (EPERM otherwise): open without it then */
    fd = open_in(dir, path, flags | O_NOATIME);
    if (fd < 0 && (errno == EPERM || errno == EACCES))
        fd = open_in(dir, path, flags);
#else
    fd = open_in(dir, path, flags);
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
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(paths, i);
        if (!PyUnicode_FSConverter(item, &encoded[i]))
            goto done;
        made = i + 1; /* encoded[i] is ours to release from here on */
        cpaths[i] = PyBytes_AS_STRING(encoded[i]);
        csizes[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sizes, i));
        if (csizes[i] == -1 && PyErr_Occurred())
            goto done;
    }
    int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW);
    Py_BEGIN_ALLOW_THREADS
    folder_t dir = {.fd = -1, .len = SIZE_MAX};
    for (Py_ssize_t i = 0; i < n; i++)
        status[i] = prefix_one(&dir, cpaths[i], csizes[i], flags, advise, &digests[i], &nread[i]);
    if (dir.fd >= 0)
        close(dir.fd);
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

/* --- listing a folder ------------------------------------------------------------------ */

PyDoc_STRVAR(scan_folder_doc,
             "scan_folder(path) -> (errno, mtime_ns, names, kinds, sizes, mtimes, ctimes)\n\n"
             "One folder of a walk (core/walk.py does the same with os.scandir when this module\n"
             "is not built). errno is 0 when it was listed (mtime_ns: the folder's, taken before\n"
             "the listing), else why not (and nothing else). For each entry but . and ..: its\n"
             "name (surrogate escapes for bytes that are not UTF-8) and a kind: b'f' a regular\n"
             "file (with its size, mtime and ctime from an lstat), b'd' a folder, b'l' a link,\n"
             "b'o' anything else, or b'e' an entry whose lstat failed (its errno in sizes).\n"
             "Links are not followed. The GIL is released while the folder is read.");

typedef struct {
    char *names;      /* the names, each ending with NUL */
    size_t used, cap;
    size_t *offsets;  /* where each name starts */
    char *kinds;
    long long *sizes, *mtimes, *ctimes;
    size_t n, ncap;
} listing_t;

static int listing_add(listing_t *l, const char *name, char kind, long long size,
                       long long mtime, long long ctime) {
    size_t len = strlen(name) + 1;
    if (l->used + len > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4096;
        while (cap < l->used + len)
            cap *= 2;
        char *names = PyMem_RawRealloc(l->names, cap);
        if (names == NULL)
            return -1;
        l->names = names;
        l->cap = cap;
    }
    if (l->n == l->ncap) {
        size_t ncap = l->ncap ? l->ncap * 2 : 256;
        size_t *offsets = PyMem_RawRealloc(l->offsets, ncap * sizeof(size_t));
        if (offsets == NULL)
            return -1;
        l->offsets = offsets;
        char *kinds = PyMem_RawRealloc(l->kinds, ncap);
        if (kinds == NULL)
            return -1;
        l->kinds = kinds;
        long long *a = PyMem_RawRealloc(l->sizes, ncap * sizeof(long long));
        if (a == NULL)
            return -1;
        l->sizes = a;
        a = PyMem_RawRealloc(l->mtimes, ncap * sizeof(long long));
        if (a == NULL)
            return -1;
        l->mtimes = a;
        a = PyMem_RawRealloc(l->ctimes, ncap * sizeof(long long));
        if (a == NULL)
            return -1;
        l->ctimes = a;
        l->ncap = ncap;
    }
    memcpy(l->names + l->used, name, len);
    l->offsets[l->n] = l->used;
    l->used += len;
    l->kinds[l->n] = kind;
    l->sizes[l->n] = size;
    l->mtimes[l->n] = mtime;
    l->ctimes[l->n] = ctime;
    l->n++;
    return 0;
}

static void listing_free(listing_t *l) {
    PyMem_RawFree(l->names);
    PyMem_RawFree(l->offsets);
    PyMem_RawFree(l->kinds);
    PyMem_RawFree(l->sizes);
    PyMem_RawFree(l->mtimes);
    PyMem_RawFree(l->ctimes);
}

static long long ns(struct timespec t) { return (long long)t.tv_sec * 1000000000LL + t.tv_nsec; }

/* Lists `path` into `l`; returns 0, an errno for the folder itself, or -1 out of memory. */
static int scan(const char *path, listing_t *l, long long *mtime) {
    size_t path_len = strlen(path);
    int dfd = open_again(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return errno;
    struct stat st;
    if (fstat(dfd, &st) < 0) {
        int e = errno;
        close(dfd);
        return e;
    }
    *mtime = ns(st.st_mtim);
    DIR *dir = fdopendir(dfd);
    if (dir == NULL) {
        int e = errno;
        close(dfd);
        return e;
    }
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(dir);
        if (e == NULL) {
            int code = errno;
            closedir(dir);
            return code;  /* 0 at the end of the folder */
        }
        const char *name = e->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
            continue;
        char kind;
        long long size = 0, mt = 0, ct = 0;
        unsigned char type = e->d_type;
        if (type == DT_REG || type == DT_UNKNOWN) {
            if (path_len + 1 + strlen(name) >= PATH_MAX) {
                /* as Python's stat of the whole path: too long (the name alone would do) */
                kind = 'e';
                size = ENAMETOOLONG;
            } else if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                kind = 'e';
                size = errno;
            } else if (S_ISREG(st.st_mode)) {
                kind = 'f';
                size = st.st_size;
                mt = ns(st.st_mtim);
                ct = ns(st.st_ctim);
            } else if (S_ISDIR(st.st_mode)) {
                kind = 'd';
            } else if (S_ISLNK(st.st_mode)) {
                kind = 'l';
            } else {
                kind = 'o';
            }
        } else if (type == DT_DIR) {
            kind = 'd';
        } else if (type == DT_LNK) {
            kind = 'l';
        } else {
            kind = 'o';
        }
        if (listing_add(l, name, kind, size, mt, ct) < 0) {
            closedir(dir);
            return -1;
        }
    }
}

static PyObject *scan_folder(PyObject *self, PyObject *arg) {
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(arg, &encoded))
        return NULL;
    listing_t l = {0};
    long long mtime = 0;
    int code;
    Py_BEGIN_ALLOW_THREADS
    code = scan(PyBytes_AS_STRING(encoded), &l, &mtime);
    Py_END_ALLOW_THREADS
    Py_DECREF(encoded);
    if (code == -1) {
        listing_free(&l);
        return PyErr_NoMemory();
    }
    if (code != 0) {
        listing_free(&l);
        return Py_BuildValue("(iOOOOOO)", code, Py_None, Py_None, Py_None, Py_None, Py_None,
                             Py_None);
    }
    PyObject *names = PyList_New((Py_ssize_t)l.n);
    PyObject *sizes = PyList_New((Py_ssize_t)l.n);
    PyObject *mtimes = PyList_New((Py_ssize_t)l.n);
    PyObject *ctimes = PyList_New((Py_ssize_t)l.n);
    PyObject *kinds = PyBytes_FromStringAndSize(l.kinds, (Py_ssize_t)l.n);
    PyObject *result = NULL;
    if (!names || !sizes || !mtimes || !ctimes || !kinds)
        goto done;
    for (size_t i = 0; i < l.n; i++) {
        PyObject *name = PyUnicode_DecodeFSDefault(l.names + l.offsets[i]);
        PyObject *a = PyLong_FromLongLong(l.sizes[i]);
        PyObject *b = PyLong_FromLongLong(l.mtimes[i]);
        PyObject *c = PyLong_FromLongLong(l.ctimes[i]);
        if (!name || !a || !b || !c) {
            Py_XDECREF(name);
            Py_XDECREF(a);
            Py_XDECREF(b);
            Py_XDECREF(c);
            goto done;
        }
        PyList_SET_ITEM(names, (Py_ssize_t)i, name);
        PyList_SET_ITEM(sizes, (Py_ssize_t)i, a);
        PyList_SET_ITEM(mtimes, (Py_ssize_t)i, b);
        PyList_SET_ITEM(ctimes, (Py_ssize_t)i, c);
    }
    result = Py_BuildValue("(iLOOOOO)", 0, mtime, names, kinds, sizes, mtimes, ctimes);
done:
    listing_free(&l);
    Py_XDECREF(names);
    Py_XDECREF(sizes);
    Py_XDECREF(mtimes);
    Py_XDECREF(ctimes);
    Py_XDECREF(kinds);
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
    {"scan_folder", scan_folder, METH_O, scan_folder_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastio",
    "The prefix pass in C (core/hashing.py has the same in Python).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastio(void) { return PyModule_Create(&module); }
