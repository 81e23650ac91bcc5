/*
 * store_blob: content-addressed files under <dir>/blobs (see store.h).
 *
 * Design.
 * - A blob is written to a fresh temporary file in tmp/ (same file system as blobs/,
 *   so the rename is atomic) and hashed as it streams in. Commit fsyncs the file,
 *   renames it to blobs/<first two hex digits>/<sha256> and fsyncs that directory, so
 *   after commit returns the blob survives a power loss, and at no moment can a
 *   reader find a partial file under a content address. Only then may the caller
 *   write a row naming the blob: a crash between the two leaves an unreferenced blob,
 *   never a row without its file.
 * - Identical content is stored once: if the address already exists the temporary
 *   file is dropped. The name is the SHA-256 of the bytes, so the existing file is the
 *   same content.
 * - tmp/ is emptied and unreferenced blobs are removed at store_open, when no upload
 *   can be in flight (the directory lock keeps other processes away). At runtime a
 *   blob is removed when the last row naming it goes (store__blob_release).
 * - Pins. Between a commit (any thread) and the row that names the blob (loop thread,
 *   a transaction later) the blob is named by nothing in the database, and identical
 *   content is one file: a job deleted meanwhile whose rows named the same bytes would
 *   release the file under the new owner (two jobs with equal outputs, an upload equal
 *   to an old input). So a commit pins its SHA-256 (a count: several commits of the
 *   same bytes may be in flight) before it looks for an existing file, the row's
 *   writer unpins after its transaction, and a caller that gives the blob up unpins by
 *   releasing it. A release leaves a pinned blob alone, and checks and unlinks under
 *   the pins' mutex, so no commit can adopt a file between the check and the unlink.
 *   A pin lost by a caller's bug only keeps a file until the sweep of the next open.
 * - Blob writers touch only files and their own hash state, so any thread may run
 *   them; fsync and hashing stay off the loop thread.
 * - Appends are gathered in a ring of 512 KiB buffers: a full buffer is written to the
 *   file and hashed by the store's shared pool (store_hash.c), on two of its threads
 *   at once, so the appending thread (an HTTP thread, for an upload) only copies and
 *   never waits on the disk, and the number of threads stays fixed however many
 *   uploads run. A blob holds at most its ring (2 MiB), allocated as it fills: small
 *   blobs use one buffer.
 * - Uploads may be written around the page cache (store_blob_uncached: O_DIRECT,
 *   whole aligned 4 MiB buffers, a 16 MiB ring; the daemon's direct_uploads).
 *   Measured on 1 GiB uploads against buffered writes (4 pairs): the daemon's CPU
 *   fell from 1.54 to 1.22 s, system time from 0.70 to 0.34 s, at the same wall time;
 *   but the job that reads the upload next reads it from the disk.
 * - Messages name files relative to the data directory: they reach API clients, who
 *   have no business knowing the server's paths.
 *
 * Workload: uploads of models, configs and records (MB to GB) and stage outputs.
 */
#include "store/store_int.h"

#include "common/sd_str.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Write buffers: 512 KiB through the page cache; 4 MiB around it (O_DIRECT writes one
 * buffer at a time per blob, and 512 KiB I/Os ran the disk at 0.64x of `cp` + `sync`,
 * 4 MiB at 0.80x). */
#define BLOB_BUF ((size_t)512 << 10)
#define BLOB_BUF_DIRECT ((size_t)4 << 20)

struct store__pin {
	char sha[STORE_SHA_HEX + 1];
	int n;
};

/* The pin of sha, or NULL. pin_mu held. */
static struct store__pin *pin_find(store_t *s, const char *sha)
{
	for (size_t i = 0; i < s->n_pins; i++)
		if (!strcmp(s->pins[i].sha, sha))
			return &s->pins[i];
	return NULL;
}

/* Bounded by the commits in flight: uploads and running stages. */
static int pin(store_t *s, const char *sha, sd_error_t *e)
{
	int rc = 0;
	pthread_mutex_lock(&s->pin_mu);
	struct store__pin *p = pin_find(s, sha);
	if (p) {
		p->n++;
		goto out;
	}
	if (s->n_pins == s->cap_pins) {
		size_t ncap = s->cap_pins ? 2 * s->cap_pins : 8;
		void *np = realloc(s->pins, ncap * sizeof(*s->pins));
		if (!np) {
			rc = sd_err(e, SD_ENOMEM, "store: out of memory");
			goto out;
		}
		s->pins = np;
		s->cap_pins = ncap;
	}
	p = &s->pins[s->n_pins++];
	memcpy(p->sha, sha, sizeof(p->sha));
	p->n = 1;
out:
	pthread_mutex_unlock(&s->pin_mu);
	return rc;
}

/* pin_mu held. */
static void pin_drop(store_t *s, const char *sha)
{
	struct store__pin *p = pin_find(s, sha);
	if (p && !--p->n)
		*p = s->pins[--s->n_pins];
}

void store__blob_unpin(store_t *s, const char *sha)
{
	pthread_mutex_lock(&s->pin_mu);
	pin_drop(s, sha);
	pthread_mutex_unlock(&s->pin_mu);
}
#define RING STORE__HASH_RING

struct store_blob {
	store_t *s;
	int fd;
	char *tmp_path;
	EVP_MD_CTX *md;
	store__hstream_t hs;
	int64_t size, limit;
	int failed; /* a failed append poisons the blob: commit refuses it */
	/* Appends arrive in the HTTP server's small reads (16 KiB); gathering them into
	 * large writes costs a copy, saves all but one in 32 system calls (or 256), and
	 * gives O_DIRECT whole aligned blocks. */
	unsigned char *ring[RING];
	size_t buf_size; /* BLOB_BUF, or BLOB_BUF_DIRECT once uncached */
	int fill;        /* buffer being filled */
	size_t used;     /* bytes in ring[fill] */
};

/* path relative to the data directory, for messages. */
static const char *rel(const store_t *s, const char *path)
{
	size_t n = strlen(s->dir);
	return !strncmp(path, s->dir, n) && path[n] == '/' ? path + n + 1 : path;
}

static int io_code(int err)
{
	return err == ENOSPC || err == EDQUOT ? SD_ENOSPACE : SD_EIO;
}

bool store__sha_ok(const char *sha)
{
	if (!sha || strlen(sha) != STORE_SHA_HEX)
		return false;
	for (size_t i = 0; i < STORE_SHA_HEX; i++)
		if (!((sha[i] >= '0' && sha[i] <= '9') || (sha[i] >= 'a' && sha[i] <= 'f')))
			return false;
	return true;
}

int store__sha256_hex(const void *data, size_t len, char out[STORE_SHA_HEX + 1],
		      sd_error_t *e)
{
	unsigned char d[32];
	unsigned int n = 0;
	if (EVP_Digest(data, len, d, &n, EVP_sha256(), NULL) != 1 || n != 32)
		return sd_err(e, SD_EINTERNAL, "store: SHA-256 failed");
	sd_hex(d, 32, out);
	return 0;
}

char *store_blob_path(store_t *s, const char *sha256)
{
	if (!store__sha_ok(sha256))
		return NULL;
	char *p = NULL;
	if (asprintf(&p, "%s/blobs/%.2s/%s", s->dir, sha256, sha256) < 0)
		return NULL;
	return p;
}

int store__blob_exists(store_t *s, const char *sha, sd_error_t *e)
{
	if (!store__sha_ok(sha))
		return sd_err(e, SD_EUSAGE, "store: '%s' is not a SHA-256 hex digest",
			      sha ? sha : "(null)");
	char *p = store_blob_path(s, sha);
	if (!p)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	struct stat st;
	int rc = stat(p, &st);
	int err = errno;
	free(p);
	if (rc == 0)
		return 0;
	if (err == ENOENT)
		return sd_err(e, SD_ENOTFOUND, "store: blob %s does not exist", sha);
	return sd_err(e, SD_EIO, "store: blob %s: %s", sha, strerror(err));
}

/* fsync of a directory makes a rename or create in it durable. */
static int fsync_dir(store_t *s, const char *path, sd_error_t *e)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return sd_err(e, SD_EIO, "store: cannot open %s: %s", rel(s, path),
			      strerror(errno));
	int rc = fsync(fd);
	int err = errno;
	close(fd);
	if (rc != 0)
		return sd_err(e, io_code(err), "store: fsync %s: %s", rel(s, path), strerror(err));
	return 0;
}

int store_blob_begin(store_t *s, int64_t limit, store_blob_t **out, sd_error_t *e)
{
	*out = NULL;
	store_blob_t *b = calloc(1, sizeof(*b));
	if (!b)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	b->s = s;
	b->fd = -1;
	b->buf_size = BLOB_BUF;
	b->limit = limit > 0 ? limit : INT64_MAX;
	b->md = EVP_MD_CTX_new();
	store__hstream_init(&b->hs, b->md, -1);
	if (!b->md || asprintf(&b->tmp_path, "%s/tmp/blob-XXXXXX", s->dir) < 0) {
		b->tmp_path = NULL;
		store_blob_abort(b);
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	}
	if (EVP_DigestInit_ex(b->md, EVP_sha256(), NULL) != 1) {
		store_blob_abort(b);
		return sd_err(e, SD_EINTERNAL, "store: SHA-256 init failed");
	}
	b->fd = mkostemp(b->tmp_path, O_CLOEXEC);
	if (b->fd < 0) {
		int err = errno;
		int rc = sd_err(e, io_code(err), "store: cannot create a file in tmp/: %s",
				strerror(err));
		free(b->tmp_path);
		b->tmp_path = NULL; /* nothing was created, nothing to unlink */
		store_blob_abort(b);
		return rc;
	}
	b->hs.fd = b->fd;
	*out = b;
	return 0;
}

/* A write of the blob's file failed (errno err): the blob is poisoned. */
static int write_failed(store_blob_t *b, int err, sd_error_t *e)
{
	b->failed = io_code(err);
	return sd_err(e, b->failed, "store: writing %s: %s", rel(b->s, b->tmp_path),
		      strerror(err));
}

/* Hands the filled part of the current buffer to be written and hashed, and moves to
 * the next buffer. A write failure shows here one or more buffers late. */
static int submit(store_blob_t *b, sd_error_t *e)
{
	size_t n = b->used;
	if (!n)
		return 0;
	int err = store__hash_submit(b->s->hashers, &b->hs, b->ring[b->fill], n);
	b->used = 0;
	b->fill = (b->fill + 1) % RING;
	return err ? write_failed(b, err, e) : 0;
}

bool store_blob_ready(store_blob_t *b, size_t len, void (*wake)(void *), void *ud)
{
	/* Each buffer len fills is a submission, and a submission waits when it leaves the
	 * whole ring in flight (the next buffer to fill must be free). */
	uint64_t k = ((uint64_t)b->used + len) / b->buf_size;
	return b->failed || k >= RING ||
	       store__hash_ready(b->s->hashers, &b->hs, (int64_t)k, wake, ud);
}

void store_blob_uncached(store_blob_t *b)
{
	int fl = fcntl(b->fd, F_GETFL);
	b->hs.direct = !b->ring[0] && fl >= 0 && fcntl(b->fd, F_SETFL, fl | O_DIRECT) == 0;
	if (b->hs.direct)
		b->buf_size = BLOB_BUF_DIRECT;
}

int store_blob_append(store_blob_t *b, const void *data, size_t len, sd_error_t *e)
{
	if (b->failed)
		return sd_err(e, b->failed, "store: blob write already failed");
	/* The limit is checked before writing, so an oversized upload never fills disk. */
	if (len > (uint64_t)(b->limit - b->size)) {
		b->failed = SD_ETOOBIG;
		return sd_err(e, SD_ETOOBIG, "store: blob exceeds the limit of %lld bytes",
			      (long long)b->limit);
	}
	const unsigned char *p = data;
	while (len) {
		if (!b->ring[b->fill] &&
		    !(b->ring[b->fill] = aligned_alloc(STORE__DIRECT_ALIGN, b->buf_size))) {
			b->failed = SD_ENOMEM;
			return sd_err(e, SD_ENOMEM, "store: out of memory");
		}
		size_t n = b->buf_size - b->used < len ? b->buf_size - b->used : len;
		memcpy(b->ring[b->fill] + b->used, p, n);
		b->used += n;
		b->size += (int64_t)n;
		p += n;
		len -= n;
		if (b->used == b->buf_size) {
			int rc = submit(b, e);
			if (rc)
				return rc;
		}
	}
	return 0;
}

/* Returns 0 on a failed write, never -1: fopencookie(3) asks for that, and glibc 2.36's
 * fwrite, handed -1 by a cookie in the middle of a large write, carries on copying from
 * past the end of the caller's buffer (seen as a SIGSEGV in a job on a full disk). */
static ssize_t stream_write(void *cookie, const char *buf, size_t n)
{
	sd_error_t e;
	if (!store_blob_append(cookie, buf, n, &e))
		return (ssize_t)n;
	/* stdio keeps only errno: say which failure it was, for the caller's message. */
	errno = e.code == SD_ENOSPACE ? ENOSPC : EIO;
	return 0;
}

FILE *store_blob_stream(store_blob_t *b)
{
	cookie_io_functions_t io = {.write = stream_write};
	FILE *f = fopencookie(b, "w", io);
	if (f && setvbuf(f, NULL, _IOFBF, 1 << 20)) {
		fclose(f);
		errno = ENOMEM;
		return NULL;
	}
	return f;
}

int store_blob_commit(store_blob_t *b, char sha256[STORE_SHA_HEX + 1], int64_t *size,
		      sd_error_t *e)
{
	int rc = 0;
	bool pinned = false;
	char sha[STORE_SHA_HEX + 1];
	char *dir = NULL, *dest = NULL;
	if (b->failed) {
		rc = sd_err(e, b->failed, "store: blob write failed earlier; not committed");
		goto out;
	}
	if ((rc = submit(b, e)) != 0)
		goto out;
	int werr = store__hash_wait(b->s->hashers, &b->hs);
	if (werr) {
		rc = write_failed(b, werr, e);
		goto out;
	}
	unsigned char d[32];
	unsigned int n = 0;
	if (b->hs.failed || EVP_DigestFinal_ex(b->md, d, &n) != 1 || n != 32) {
		rc = sd_err(e, SD_EINTERNAL, "store: SHA-256 failed");
		goto out;
	}
	sd_hex(d, 32, sha);
	if ((rc = pin(b->s, sha, e)) != 0)
		goto out;
	pinned = true;
	if (fsync(b->fd) != 0) {
		int err = errno;
		rc = sd_err(e, io_code(err), "store: fsync %s: %s", rel(b->s, b->tmp_path),
			    strerror(err));
		goto out;
	}
	if (close(b->fd) != 0) {
		int err = errno;
		b->fd = -1;
		rc = sd_err(e, io_code(err), "store: close %s: %s", rel(b->s, b->tmp_path),
			    strerror(err));
		goto out;
	}
	b->fd = -1;
	if (asprintf(&dir, "%s/blobs/%.2s", b->s->dir, sha) < 0) {
		dir = NULL;
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto out;
	}
	if (!(dest = store_blob_path(b->s, sha))) {
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto out;
	}
	bool made = mkdir(dir, 0750) == 0;
	if (!made && errno != EEXIST) {
		int err = errno;
		rc = sd_err(e, io_code(err), "store: cannot create %s: %s", rel(b->s, dir),
			    strerror(err));
		goto out;
	}
	if (made) {
		/* The new fan-out directory itself must survive, or the rename would not. */
		char *blobs = NULL;
		if (asprintf(&blobs, "%s/blobs", b->s->dir) < 0) {
			rc = sd_err(e, SD_ENOMEM, "store: out of memory");
			goto out;
		}
		rc = fsync_dir(b->s, blobs, e);
		free(blobs);
		if (rc)
			goto out;
	}
	struct stat st;
	if (stat(dest, &st) == 0) {
		/* Same name, same bytes: keep the existing file (temp removed below). */
	} else if (rename(b->tmp_path, dest) != 0) {
		int err = errno;
		rc = sd_err(e, io_code(err), "store: rename to %s: %s", rel(b->s, dest),
			    strerror(err));
		goto out;
	} else {
		free(b->tmp_path);
		b->tmp_path = NULL; /* now the blob; abort must not unlink it */
		if ((rc = fsync_dir(b->s, dir, e)) != 0)
			goto out;
	}
	memcpy(sha256, sha, sizeof(sha));
	*size = b->size;
out:
	if (rc && pinned)
		store__blob_unpin(b->s, sha);
	free(dir);
	free(dest);
	store_blob_abort(b); /* removes the temporary file if it was not renamed */
	return rc;
}

void store_blob_abort(store_blob_t *b)
{
	if (!b)
		return;
	store__hash_wait(b->s->hashers, &b->hs);
	store__hstream_deinit(&b->hs);
	if (b->fd >= 0)
		close(b->fd);
	if (b->tmp_path)
		unlink(b->tmp_path);
	free(b->tmp_path);
	for (int i = 0; i < RING; i++)
		free(b->ring[i]);
	EVP_MD_CTX_free(b->md);
	free(b);
}

/* pin_mu held. */
static void release_locked(store_t *s, const char *sha)
{
	if (pin_find(s, sha))
		return; /* committed again, its row on the way */
	int64_t referenced;
	if (store__scalar(&s->w, STORE__SQL_BLOB_REFERENCED, sha, &referenced, NULL,
			  "check a blob's rows") != 0 || referenced)
		return; /* a failed check keeps the file: an orphan is swept at the next open */
	char *p = store_blob_path(s, sha);
	if (p)
		unlink(p); /* a lost unlink (power loss) only leaves an orphan for the sweep */
	free(p);
}

void store_blob_release(store_t *s, const char *sha256)
{
	if (!store__sha_ok(sha256))
		return;
	pthread_mutex_lock(&s->pin_mu);
	pin_drop(s, sha256);
	release_locked(s, sha256);
	pthread_mutex_unlock(&s->pin_mu);
}

void store__blob_release(store_t *s, const char *sha)
{
	pthread_mutex_lock(&s->pin_mu);
	release_locked(s, sha);
	pthread_mutex_unlock(&s->pin_mu);
}

/* Removes every entry of tmp/: all are blobs of writers that died before commit. */
static int sweep_tmp(store_t *s, sd_error_t *e)
{
	char *tmp = NULL;
	if (asprintf(&tmp, "%s/tmp", s->dir) < 0)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	DIR *d = opendir(tmp);
	if (!d) {
		int err = errno;
		sd_err(e, SD_EIO, "store: cannot open %s: %s", tmp, strerror(err));
		free(tmp);
		return SD_EIO;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
	free(tmp);
	return 0;
}

/* Removes blobs no row names: left by a crash between commit and the row insert, or by
 * an unlink lost to a power cut. Files whose names are not digests are left alone. */
static int sweep_orphans(store_t *s, sd_error_t *e)
{
	char *blobs = NULL;
	if (asprintf(&blobs, "%s/blobs", s->dir) < 0)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	DIR *top = opendir(blobs);
	if (!top) {
		int err = errno;
		sd_err(e, SD_EIO, "store: cannot open %s: %s", blobs, strerror(err));
		free(blobs);
		return SD_EIO;
	}
	struct dirent *de;
	while ((de = readdir(top)) != NULL) {
		if (strlen(de->d_name) != 2 || de->d_name[0] == '.')
			continue;
		int fd = openat(dirfd(top), de->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *sub = fd >= 0 ? fdopendir(fd) : NULL;
		if (!sub) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		struct dirent *f;
		while ((f = readdir(sub)) != NULL) {
			if (store__sha_ok(f->d_name) && strncmp(f->d_name, de->d_name, 2) == 0)
				store__blob_release(s, f->d_name);
		}
		closedir(sub);
	}
	closedir(top);
	free(blobs);
	return 0;
}

int store__blob_sweep(store_t *s, sd_error_t *e)
{
	int rc = sweep_tmp(s, e);
	return rc ? rc : sweep_orphans(s, e);
}
