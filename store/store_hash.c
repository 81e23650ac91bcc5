/*
 * store_hash: the shared pool of threads that hash blobs (see store_int.h).
 *
 * Design. A blob that streams in hands each filled buffer to the pool instead of to a
 * thread of its own, so the number of hashing threads is fixed (hash_threads) however
 * many uploads are in flight. SHA-256 is sequential, so one blob's buffers are hashed
 * in order by one thread at a time: a stream is queued while it has buffers waiting
 * and no thread holds it; a thread takes a stream, hashes one buffer, and puts the
 * stream back at the tail if more wait, so a fast upload cannot starve the others.
 * One mutex guards the queue and every stream's counters (a handful of operations per
 * 512 KiB buffer). Without a pool (the CLI, tests) buffers are hashed by the caller.
 *
 * Workload: uploads and stage outputs, MB to GB, at up to a few GB/s in total.
 */
#include "store/store_int.h"

#include <stdlib.h>

struct store__hashpool {
	pthread_mutex_t mu;
	pthread_cond_t work;
	store__hstream_t *head, *tail; /* streams with buffers waiting and no thread */
	bool stop;
	int n;
	pthread_t th[];
};

/* Puts h at the tail of the streams waiting for a thread; called with p->mu held. */
static void enqueue(store__hashpool_t *p, store__hstream_t *h)
{
	h->queued = true;
	h->next = NULL;
	if (p->tail)
		p->tail->next = h;
	else
		p->head = h;
	p->tail = h;
}

static void *hash_main(void *arg)
{
	store__hashpool_t *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->head && !p->stop)
			pthread_cond_wait(&p->work, &p->mu);
		store__hstream_t *h = p->head;
		if (!h)
			break;
		p->head = h->next;
		if (!p->head)
			p->tail = NULL;
		h->queued = false;
		h->active = true;
		int i = h->first;
		pthread_mutex_unlock(&p->mu);
		bool ok = EVP_DigestUpdate(h->md, h->buf[i], h->len[i]) == 1;
		pthread_mutex_lock(&p->mu);
		h->failed |= !ok;
		h->first = (h->first + 1) % STORE__HASH_RING;
		h->pending--;
		h->active = false;
		if (h->pending)
			enqueue(p, h);
		pthread_cond_broadcast(&h->cv);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int store__hashpool_start(store__hashpool_t **out, int threads, sd_error_t *e)
{
	store__hashpool_t *p = calloc(1, sizeof(*p) + (size_t)threads * sizeof(pthread_t));
	if (!p)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work, NULL);
	for (; p->n < threads; p->n++) {
		if (pthread_create(&p->th[p->n], NULL, hash_main, p) != 0) {
			store__hashpool_stop(p);
			return sd_err(e, SD_EINTERNAL, "store: cannot start hashing threads");
		}
	}
	*out = p;
	return 0;
}

void store__hashpool_stop(store__hashpool_t *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	pthread_cond_destroy(&p->work);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

void store__hstream_init(store__hstream_t *h, EVP_MD_CTX *md)
{
	*h = (store__hstream_t){.md = md};
	pthread_cond_init(&h->cv, NULL);
}

void store__hstream_deinit(store__hstream_t *h)
{
	pthread_cond_destroy(&h->cv);
}

void store__hash_submit(store__hashpool_t *p, store__hstream_t *h, const unsigned char *buf,
			size_t len)
{
	if (!p) {
		h->failed |= EVP_DigestUpdate(h->md, buf, len) != 1;
		return;
	}
	pthread_mutex_lock(&p->mu);
	int slot = (h->first + h->pending) % STORE__HASH_RING;
	h->buf[slot] = buf;
	h->len[slot] = len;
	h->pending++;
	if (!h->queued && !h->active) {
		enqueue(p, h);
		pthread_cond_signal(&p->work);
	}
	/* Buffers are handed over in ring order, so once fewer than all are pending the
	 * caller's next buffer is free to fill. */
	while (h->pending == STORE__HASH_RING)
		pthread_cond_wait(&h->cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

void store__hash_wait(store__hashpool_t *p, store__hstream_t *h)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	while (h->pending)
		pthread_cond_wait(&h->cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
}
