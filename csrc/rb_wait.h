/* rb_wait.h - an event count: lets a thread sleep until "something changed"
   without a lock on the fast path. Linux futex underneath; the word is a plain
   32-bit integer, so the same code works in process-shared memory.

   Waiter:   key = rb_event_prepare(e); if (condition holds) rb_event_cancel(e);
             else rb_event_wait(e, key, timeout);
   Notifier: make the condition true; rb_event_notify(e);
   A notify between prepare and wait bumps the epoch, so the futex wait
   returns at once instead of sleeping through the wake-up. */
#ifndef RB_WAIT_H
#define RB_WAIT_H

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include "rb_common.h"

#ifdef __linux__
#  include <limits.h>
#  include <linux/futex.h>
#  include <sys/syscall.h>
#  include <unistd.h>
#endif

typedef struct {
    _Atomic uint32_t epoch;    /* bumped by every notify that found waiters */
    _Atomic uint32_t waiters;  /* threads between prepare and the end of wait */
} rb_event;

static inline void rb_event_init(rb_event *e)
{
    atomic_init(&e->epoch, 0);
    atomic_init(&e->waiters, 0);
}

static inline uint32_t rb_event_prepare(rb_event *e)
{
    atomic_fetch_add_explicit(&e->waiters, 1, memory_order_seq_cst);
    return atomic_load_explicit(&e->epoch, memory_order_seq_cst);
}

static inline void rb_event_cancel(rb_event *e)
{
    atomic_fetch_sub_explicit(&e->waiters, 1, memory_order_relaxed);
}

static inline uint32_t rb_event_waiters(rb_event *e)
{
    return atomic_load_explicit(&e->waiters, memory_order_relaxed);
}

/* Sleeps until notified, timeout_ns elapses (< 0: no limit) or a signal
   arrives. Ends the wait begun by prepare. Returns 0 when woken or when the
   epoch had already moved, ETIMEDOUT, or EINTR (the caller checks signals). */
static inline int rb_event_wait(rb_event *e, uint32_t key, int64_t timeout_ns, int shared)
{
    int rc = 0;
#ifdef __linux__
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    long r = syscall(SYS_futex, (uint32_t *)&e->epoch,
                     shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, key, tsp, NULL, 0);
    if (r == -1) {
        if (errno == ETIMEDOUT)
            rc = ETIMEDOUT;
        else if (errno == EINTR)
            rc = EINTR;
        /* EAGAIN: the epoch moved before we slept - a wake-up we did not miss */
    }
#else
    /* No futex: nap briefly and let the caller re-check; bounded, not a spin. */
    (void)shared;
    if (atomic_load_explicit(&e->epoch, memory_order_acquire) == key) {
        int64_t nap = 200000; /* 0.2 ms */
        if (timeout_ns >= 0 && timeout_ns < nap)
            nap = timeout_ns;
        struct timespec ts = {0, (long)nap};
        nanosleep(&ts, NULL);
        if (timeout_ns >= 0 && nap == timeout_ns)
            rc = ETIMEDOUT;
    }
#endif
    atomic_fetch_sub_explicit(&e->waiters, 1, memory_order_relaxed);
    return rc;
}

/* Wakes every waiter, for callers that hold one lock around both their notify
   and every waiter's prepare-and-recheck (the Python bindings: the GIL). The
   lock's acquire and release order the accesses. Costs one load when nobody waits. */
static inline void rb_event_notify_locked(rb_event *e, int shared)
{
    if (RB_LIKELY(atomic_load_explicit(&e->waiters, memory_order_relaxed) == 0))
        return;
    atomic_fetch_add_explicit(&e->epoch, 1, memory_order_seq_cst);
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)&e->epoch,
            shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)shared;
#endif
}

/* Wakes every waiter, lock-free callers. The fence orders the caller's earlier
   stores (the item it pushed) before the read of waiters, pairing with the
   seq_cst increment in prepare, so no wake-up is lost. */
static inline void rb_event_notify(rb_event *e, int shared)
{
    atomic_thread_fence(memory_order_seq_cst);
    rb_event_notify_locked(e, shared);
}

/* Monotonic clock in nanoseconds, for deadlines. */
static inline int64_t rb_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif /* RB_WAIT_H */
