/*
 * lock — mutexes that know their place in the lock order (internal.h says
 * it). In debug builds each thread keeps the ranks it holds, and taking a
 * lock of a rank not after the last one held aborts with both names: an
 * order broken in a test is found at once, not as a deadlock one day.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

#ifndef NDEBUG
/* Locks a thread holds at once, at most (ns, nodes, jobs, a leaf). */
#define HELD_MAX 8
static _Thread_local const struct fs_mutex *held[HELD_MAX];
static _Thread_local int nheld;

/* A sanitizer build says where. */
void __sanitizer_print_stack_trace(void) __attribute__((weak));

/* Abort when l may not be taken after what this thread holds. */
static void check_order(const struct fs_mutex *l)
{
	if (nheld && (held[nheld - 1]->rank >= l->rank || held[nheld - 1]->rank == FS_LOCK_LEAF)) {
		fprintf(stderr, "hevcfs: lock order: %s taken while holding %s\n", l->name,
			held[nheld - 1]->name);
		if (__sanitizer_print_stack_trace)
			__sanitizer_print_stack_trace();
		abort();
	}
	if (nheld == HELD_MAX)
		abort();
}

static void note_taken(const struct fs_mutex *l)
{
	held[nheld++] = l;
}

static void note_released(const struct fs_mutex *l)
{
	for (int i = nheld - 1; i >= 0; i--) {
		if (held[i] == l) {
			for (int k = i; k < nheld - 1; k++)
				held[k] = held[k + 1];
			nheld--;
			return;
		}
	}
	fprintf(stderr, "hevcfs: %s released but not held\n", l->name);
	abort();
}
#else
static void check_order(const struct fs_mutex *l)
{
	(void)l;
}

static void note_taken(const struct fs_mutex *l)
{
	(void)l;
}

static void note_released(const struct fs_mutex *l)
{
	(void)l;
}
#endif

void fs_mutex_init(struct fs_mutex *l, enum fs_lock_rank rank, const char *name)
{
	pthread_mutex_init(&l->m, NULL);
	l->rank = rank;
	l->name = name;
}

void fs_mutex_destroy(struct fs_mutex *l)
{
	pthread_mutex_destroy(&l->m);
}

void fs_mutex_lock(struct fs_mutex *l)
{
	check_order(l);
	pthread_mutex_lock(&l->m);
	note_taken(l);
}

void fs_mutex_unlock(struct fs_mutex *l)
{
	note_released(l);
	pthread_mutex_unlock(&l->m);
}

void fs_cond_wait(pthread_cond_t *c, struct fs_mutex *l)
{
	/* the mutex is given up and taken back inside: held again on return */
	pthread_cond_wait(c, &l->m);
}

int fs_cond_timedwait(pthread_cond_t *c, struct fs_mutex *l, const struct timespec *abstime)
{
	return pthread_cond_timedwait(c, &l->m, abstime);
}
