/*
 * powercut.so: an LD_PRELOAD shim that records, for one data directory, what a power cut would
 * leave on disk, so a test can SIGKILL mqd and then throw away everything that was not fsynced.
 *
 * The model (strict, like a disk with a volatile cache and no luck):
 *  - A file's contents survive only as of its last fsync/fdatasync. Writes after that are lost,
 *    and so is a truncation or a size change.
 *  - A directory's entries survive only as of its last fsync: a file created, renamed or
 *    unlinked after that comes back as it was named then (a new file vanishes, a renamed one
 *    gets its old name back, an unlinked one returns), with the contents of its own last fsync
 *    (empty if it was never fsynced).
 *
 * How: the shim watches write, pwrite, writev, pwritev and ftruncate on files of the data
 * directory (MQD_POWERCUT_DATA, flat, as RocksDB's is; a subdirectory, such as a cluster
 * member's raft-snap/ of snapshot files, is left out of the model: its files keep whatever they
 * hold at the kill, so the shim checks nothing about them) and remembers which byte ranges of each
 * file (inode) changed. fsync/fdatasync of a file reads those ranges when it is called and,
 * once it returns, copies them into the file's shadow, $MQD_POWERCUT_SHADOW/ids/<id>, which
 * thus holds exactly what the disk would have (a write made while an fsync runs is not covered
 * by it). fsync of the
 * directory writes $MQD_POWERCUT_SHADOW/namespace ("<id>\t<name>" per entry) atomically. The real
 * fsync is not needed for the model and is skipped. After the kill, powercut.py's restore()
 * rebuilds the data directory from namespace and ids/, and the next run of the shim starts from
 * that state (every file is then known and synced).
 *
 * Build (powercut/__init__.py does): gcc -O2 -shared -fPIC -o powercut.so powercut.c -ldl
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536

struct range {
    off_t start, end;
};

/* One file (inode) of the data directory. */
struct file {
    dev_t dev;
    ino_t ino;
    unsigned long id;        /* its shadow: ids/<id> */
    off_t min_size;          /* smallest size since the last sync (truncations) */
    int copy_all;            /* contents unknown: copy the whole file at the next sync */
    struct range *dirty;     /* ranges written since the last sync */
    size_t ndirty, capdirty;
};

struct fd_info {
    unsigned char tracked; /* 1: a file of the data dir, 2: the data dir itself */
    dev_t dev;
    ino_t ino;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int active;
static char data_dir[PATH_MAX], data_real[PATH_MAX], shadow_dir[PATH_MAX];
static struct fd_info fds[MAX_FD];
static struct file *files;
static size_t nfiles, capfiles;
static unsigned long next_id = 1;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
/* $MQD_POWERCUT_SYNC_DELAY_US: how long each fsync of a data file takes. */
static unsigned sync_delay_us;
static int (*real_fdatasync)(int);

static void die(const char *what) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "powercut: %s: %s\n", what, strerror(errno));
    if (n > 0)
        (void)!write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    abort();
}

static struct file *find_file(dev_t dev, ino_t ino) {
    for (size_t i = 0; i < nfiles; i++)
        if (files[i].dev == dev && files[i].ino == ino)
            return &files[i];
    return NULL;
}

/* A file with a fresh shadow id, replacing any earlier file of that inode (inodes are reused). */
static struct file *new_file(dev_t dev, ino_t ino, unsigned long id, int copy_all) {
    struct file *f = find_file(dev, ino);
    if (!f) {
        if (nfiles == capfiles) {
            capfiles = capfiles ? capfiles * 2 : 64;
            files = realloc(files, capfiles * sizeof *files);
            if (!files)
                die("realloc");
        }
        f = &files[nfiles++];
        memset(f, 0, sizeof *f);
    }
    f->dev = dev;
    f->ino = ino;
    f->id = id;
    f->min_size = 0;
    f->copy_all = copy_all;
    f->ndirty = 0;
    if (id >= next_id)
        next_id = id + 1;
    return f;
}

static void add_dirty(struct file *f, off_t start, off_t end) {
    if (end <= start)
        return;
    if (f->ndirty > 0) {
        struct range *last = &f->dirty[f->ndirty - 1];
        if (start <= last->end && end >= last->start) {
            if (start < last->start)
                last->start = start;
            if (end > last->end)
                last->end = end;
            return;
        }
    }
    if (f->ndirty == f->capdirty) {
        f->capdirty = f->capdirty ? f->capdirty * 2 : 16;
        f->dirty = realloc(f->dirty, f->capdirty * sizeof *f->dirty);
        if (!f->dirty)
            die("realloc");
    }
    f->dirty[f->ndirty].start = start;
    f->dirty[f->ndirty].end = end;
    f->ndirty++;
}

static void shadow_path(char *out, size_t size, unsigned long id) {
    snprintf(out, size, "%s/ids/%lu", shadow_dir, id);
}

/* What one fsync of a file makes durable: what changed in it since the last sync, read when
 * the fsync was called. Writes made while it runs are left to the next one, as a disk may
 * leave them. */
struct chunk {
    off_t at;
    size_t len;
    char *data;
};
struct capture {
    unsigned long id; /* the file's shadow */
    off_t trunc_to;   /* smallest size since the last sync */
    off_t size;
    struct chunk *chunks;
    size_t nchunks;
    unsigned long ticket; /* captures are applied in the order they were taken */
};
static unsigned long next_ticket, applied_ticket;
static pthread_cond_t turn = PTHREAD_COND_INITIALIZER;

/* Reads what changed in `fd` since the last sync. Under the lock. */
static void capture_file(int fd, struct file *f, struct capture *c) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat");
    if (f->copy_all) {
        f->min_size = 0;
        f->ndirty = 0;
        add_dirty(f, 0, st.st_size);
        f->copy_all = 0;
    }
    c->id = f->id;
    c->trunc_to = f->min_size < st.st_size ? f->min_size : st.st_size;
    c->size = st.st_size;
    c->chunks = calloc(f->ndirty ? f->ndirty : 1, sizeof *c->chunks);
    if (!c->chunks)
        die("calloc");
    /* `fd` may be write-only: read through a descriptor of our own. */
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    int in = real_open(self, O_RDONLY);
    if (in < 0)
        die("reopen for reading");
    for (size_t i = 0; i < f->ndirty; i++) {
        off_t at = f->dirty[i].start;
        off_t end = f->dirty[i].end < st.st_size ? f->dirty[i].end : st.st_size;
        if (at >= end)
            continue;
        struct chunk *ch = &c->chunks[c->nchunks++];
        ch->at = at;
        ch->data = malloc((size_t)(end - at));
        if (!ch->data)
            die("malloc");
        while (at < end) {
            ssize_t n = pread(in, ch->data + ch->len, (size_t)(end - at), at);
            if (n < 0)
                die("pread");
            if (n == 0)
                break;
            ch->len += (size_t)n;
            at += n;
        }
    }
    real_close(in);
    f->ndirty = 0;
    f->min_size = st.st_size;
    c->ticket = next_ticket++;
}

/* Writes a capture into its file's shadow, after every capture taken before it. Under the lock. */
static void apply_capture(struct capture *c) {
    while (c->ticket != applied_ticket)
        pthread_cond_wait(&turn, &lock);
    char path[PATH_MAX];
    shadow_path(path, sizeof path, c->id);
    int out = real_open(path, O_WRONLY | O_CREAT, 0644);
    if (out < 0)
        die("open shadow");
    if (real_ftruncate(out, c->trunc_to) != 0 || real_ftruncate(out, c->size) != 0)
        die("truncate shadow");
    for (size_t i = 0; i < c->nchunks; i++) {
        if (real_pwrite(out, c->chunks[i].data, c->chunks[i].len, c->chunks[i].at) !=
            (ssize_t)c->chunks[i].len)
            die("pwrite shadow");
        free(c->chunks[i].data);
    }
    free(c->chunks);
    real_close(out);
    applied_ticket++;
    pthread_cond_broadcast(&turn);
}

static void sync_dir(void) {
    char tmp[PATH_MAX], final[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/namespace.tmp", shadow_dir);
    snprintf(final, sizeof final, "%s/namespace", shadow_dir);
    FILE *out = fopen(tmp, "w");
    if (!out)
        die("fopen namespace");
    DIR *dir = opendir(data_real);
    if (!dir)
        die("opendir");
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.' &&
            (entry->d_name[1] == 0 || (entry->d_name[1] == '.' && entry->d_name[2] == 0)))
            continue;
        struct stat st;
        if (fstatat(dirfd(dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        struct file *f = find_file(st.st_dev, st.st_ino);
        if (!f) /* made without us seeing it: nothing of it was synced */
            f = new_file(st.st_dev, st.st_ino, next_id, 0);
        fprintf(out, "%lu\t%s\n", f->id, entry->d_name);
    }
    closedir(dir);
    if (fclose(out) != 0)
        die("fclose namespace");
    if (rename(tmp, final) != 0)
        die("rename namespace");
}

/* Whether `path` (relative to `dirfd`) names the data directory (2), a file in it (1), or
 * something else (0). */
static int classify(int dirfd, const char *path) {
    char full[PATH_MAX];
    if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base))
                return 0;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(link, base, sizeof base - 1);
            if (n < 0)
                return 0;
            base[n] = 0;
        }
        snprintf(full, sizeof full, "%s/%s", base, path);
    }
    size_t len = strlen(full);
    while (len > 1 && full[len - 1] == '/')
        full[--len] = 0;
    const char *dirs[2] = {data_dir, data_real};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(dirs[i]);
        if (strcmp(full, dirs[i]) == 0)
            return 2;
        if (strncmp(full, dirs[i], n) == 0 && full[n] == '/' && !strchr(full + n + 1, '/'))
            return 1;
    }
    return 0;
}

static void after_open(int fd, int kind, int created, int truncated) {
    if (fd < 0 || fd >= MAX_FD || kind == 0)
        return;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return;
    if (kind == 1 && S_ISDIR(st.st_mode))
        return; /* a subdirectory (a member's raft-snap/): its files are not modelled */
    pthread_mutex_lock(&lock);
    fds[fd].tracked = (unsigned char)kind;
    fds[fd].dev = st.st_dev;
    fds[fd].ino = st.st_ino;
    if (kind == 1) {
        struct file *f = find_file(st.st_dev, st.st_ino);
        if (created || !f)
            f = new_file(st.st_dev, st.st_ino, next_id, !created);
        if (truncated) /* O_TRUNC: a size change like ftruncate(fd, 0) */
            f->min_size = 0;
    }
    pthread_mutex_unlock(&lock);
}

static int exists_at(int dirfd, const char *path) {
    struct stat st;
    return fstatat(dirfd, path, &st, 0) == 0;
}

#define OPEN_BODY(call, dirfd)                                                               \
    mode_t mode = 0;                                                                         \
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {                             \
        va_list ap;                                                                          \
        va_start(ap, flags);                                                                 \
        mode = va_arg(ap, mode_t);                                                           \
        va_end(ap);                                                                          \
    }                                                                                        \
    int kind = active ? classify(dirfd, path) : 0;                                           \
    int existed = kind == 1 && (flags & O_CREAT) ? exists_at(dirfd, path) : 1;               \
    int fd = call;                                                                           \
    if (kind)                                                                                \
        after_open(fd, kind, !existed, (flags & O_TRUNC) != 0);                              \
    return fd;

int open(const char *path, int flags, ...) {
    OPEN_BODY(real_open(path, flags, mode), AT_FDCWD)
}
int open64(const char *path, int flags, ...) {
    OPEN_BODY(real_open64(path, flags, mode), AT_FDCWD)
}
int openat(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(real_openat(dirfd, path, flags, mode), dirfd)
}
int openat64(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(real_openat64(dirfd, path, flags, mode), dirfd)
}

int close(int fd) {
    if (active && fd >= 0 && fd < MAX_FD && fds[fd].tracked) {
        pthread_mutex_lock(&lock);
        fds[fd].tracked = 0;
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

static struct file *tracked_file(int fd) {
    if (!active || fd < 0 || fd >= MAX_FD || fds[fd].tracked != 1)
        return NULL;
    return find_file(fds[fd].dev, fds[fd].ino);
}

static void wrote(int fd, off_t start, ssize_t n) {
    if (n <= 0)
        return;
    pthread_mutex_lock(&lock);
    struct file *f = tracked_file(fd);
    if (f)
        add_dirty(f, start, start + n);
    pthread_mutex_unlock(&lock);
}

/* Writes at the file offset: the range is known from where the offset ends up. */
static void wrote_at_offset(int fd, ssize_t n) {
    if (n <= 0 || !active || fd < 0 || fd >= MAX_FD || fds[fd].tracked != 1)
        return;
    off_t end = lseek(fd, 0, SEEK_CUR);
    if (end >= 0)
        wrote(fd, end - n, n);
}

ssize_t write(int fd, const void *buf, size_t count) {
    ssize_t n = real_write(fd, buf, count);
    wrote_at_offset(fd, n);
    return n;
}
ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    ssize_t n = real_writev(fd, iov, iovcnt);
    wrote_at_offset(fd, n);
    return n;
}
ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    ssize_t n = real_pwrite(fd, buf, count, offset);
    if (active)
        wrote(fd, offset, n);
    return n;
}
ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    ssize_t n = real_pwrite64(fd, buf, count, offset);
    if (active)
        wrote(fd, offset, n);
    return n;
}
ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    ssize_t n = real_pwritev(fd, iov, iovcnt, offset);
    if (active)
        wrote(fd, offset, n);
    return n;
}

static void truncated(int fd, off_t length) {
    pthread_mutex_lock(&lock);
    struct file *f = tracked_file(fd);
    if (f && length < f->min_size)
        f->min_size = length;
    pthread_mutex_unlock(&lock);
}

int ftruncate(int fd, off_t length) {
    int rc = real_ftruncate(fd, length);
    if (rc == 0 && active)
        truncated(fd, length);
    return rc;
}
int ftruncate64(int fd, off_t length) {
    int rc = real_ftruncate64(fd, length);
    if (rc == 0 && active)
        truncated(fd, length);
    return rc;
}

static int synced(int fd, int (*real)(int)) {
    if (!active || fd < 0 || fd >= MAX_FD || !fds[fd].tracked)
        return real(fd);
    if (fds[fd].tracked == 2) {
        if (sync_delay_us)
            usleep(sync_delay_us);
        pthread_mutex_lock(&lock);
        sync_dir();
        pthread_mutex_unlock(&lock);
        return 0;
    }
    /* A disk takes a while to sync. What it syncs is what was written when the call was made,
     * and it is safe only once the call returns: a kill during the delay loses it, as a power
     * cut during a real fsync may, and what is written meanwhile waits for the next fsync. */
    struct capture c = {0};
    int captured = 0;
    pthread_mutex_lock(&lock);
    struct file *f = find_file(fds[fd].dev, fds[fd].ino);
    if (f) {
        capture_file(fd, f, &c);
        captured = 1;
    }
    pthread_mutex_unlock(&lock);
    if (sync_delay_us)
        usleep(sync_delay_us);
    if (captured) {
        pthread_mutex_lock(&lock);
        apply_capture(&c);
        pthread_mutex_unlock(&lock);
    }
    return 0;
}

int fsync(int fd) { return synced(fd, real_fsync); }
int fdatasync(int fd) { return synced(fd, real_fdatasync); }

/* Every file named in the namespace is synced as of now: restore() made it from its shadow. */
static void load_namespace(void) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/namespace", shadow_dir);
    FILE *in = fopen(path, "r");
    if (!in)
        return;
    char line[PATH_MAX + 32];
    while (fgets(line, sizeof line, in)) {
        char *tab = strchr(line, '\t');
        if (!tab)
            continue;
        *tab = 0;
        char *name = tab + 1;
        name[strcspn(name, "\n")] = 0;
        unsigned long id = strtoul(line, NULL, 10);
        char file[PATH_MAX + 256];
        snprintf(file, sizeof file, "%s/%s", data_real, name);
        struct stat st;
        if (stat(file, &st) == 0) {
            struct file *f = new_file(st.st_dev, st.st_ino, id, 0);
            f->min_size = st.st_size;
        } else if (id >= next_id) {
            next_id = id + 1;
        }
    }
    fclose(in);
    DIR *ids;
    snprintf(path, sizeof path, "%s/ids", shadow_dir);
    if ((ids = opendir(path)) != NULL) {
        struct dirent *entry;
        while ((entry = readdir(ids)) != NULL) {
            unsigned long id = strtoul(entry->d_name, NULL, 10);
            if (id >= next_id)
                next_id = id + 1;
        }
        closedir(ids);
    }
}

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

__attribute__((constructor)) static void init(void) {
    RESOLVE(open);
    RESOLVE(open64);
    RESOLVE(openat);
    RESOLVE(openat64);
    RESOLVE(close);
    RESOLVE(write);
    RESOLVE(pwrite);
    RESOLVE(pwrite64);
    RESOLVE(writev);
    RESOLVE(pwritev);
    RESOLVE(ftruncate);
    RESOLVE(ftruncate64);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    const char *data = getenv("MQD_POWERCUT_DATA");
    const char *shadow = getenv("MQD_POWERCUT_SHADOW");
    if (!data || !shadow)
        return;
    const char *delay = getenv("MQD_POWERCUT_SYNC_DELAY_US");
    if (delay)
        sync_delay_us = (unsigned)strtoul(delay, NULL, 10);
    snprintf(data_dir, sizeof data_dir, "%s", data);
    size_t len = strlen(data_dir);
    while (len > 1 && data_dir[len - 1] == '/')
        data_dir[--len] = 0;
    if (!realpath(data_dir, data_real))
        die("realpath of MQD_POWERCUT_DATA");
    snprintf(shadow_dir, sizeof shadow_dir, "%s", shadow);
    char ids[PATH_MAX];
    snprintf(ids, sizeof ids, "%s/ids", shadow_dir);
    mkdir(shadow_dir, 0755);
    mkdir(ids, 0755);
    load_namespace();
    active = 1;
}
