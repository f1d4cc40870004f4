/* rb_shm.h - a single-producer single-consumer ring of variable-length byte
   records laid out in one block of (shared) memory: a header with the two
   positions and their event counts, then the data area. Positions are byte
   counts that only grow; the producer owns head, the consumer owns tail.
   Header-only C11; it neither maps memory nor knows about Python. */
#ifndef RB_SHM_H
#define RB_SHM_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sched.h>
#include <string.h>
#include "rb_common.h"
#include "rb_wait.h"

#define RB_SHM_MAGIC   UINT64_C(0x314e4e4148434252)  /* "RBCHANN1" little-endian */
#define RB_SHM_VERSION 1u
#define RB_SHM_WRAP    UINT32_C(0xFFFFFFFF)          /* length word: "continue at offset 0" */
#define RB_SHM_ALIGN   8u                            /* every record starts 8-byte aligned */

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;        /* offset of the data area */
    uint64_t capacity;           /* bytes in the data area: a power of two */
    int32_t creator_pid;
    _Atomic int32_t sender_pid;  /* last process that sent; 0 before any */
    _Atomic int32_t receiver_pid;
    _Atomic uint32_t sender_closed;
    _Atomic uint32_t receiver_closed;
    alignas(RB_CACHE_LINE) _Atomic uint64_t head;   /* producer: bytes written */
    rb_event not_empty;                             /* the consumer sleeps here */
    alignas(RB_CACHE_LINE) _Atomic uint64_t tail;   /* consumer: bytes released */
    rb_event not_full;                              /* the producer sleeps here */
    alignas(RB_CACHE_LINE) char data[];
} rb_shm;

static inline uint64_t rb_shm_record_size(uint64_t len)
{
    return (4 + len + RB_SHM_ALIGN - 1) & ~(uint64_t)(RB_SHM_ALIGN - 1);
}

/* Largest payload that always fits once the ring drains: half the area less
   a length word, so a record and the gap it may skip at the wrap both fit;
   and below 4 GiB, which the 32-bit length word can say. */
static inline uint64_t rb_shm_max_message(const rb_shm *s)
{
    uint64_t half = s->capacity / 2 - RB_SHM_ALIGN;
    /* the length word is 32 bits, and its all-ones value is the wrap marker */
    return half < UINT32_MAX - 15 ? half : UINT32_MAX - 15;
}

/* Bytes a mapping needs for a data area of capacity bytes. */
static inline uint64_t rb_shm_mapping_size(uint64_t capacity)
{
    return (uint64_t)sizeof(rb_shm) + capacity;
}

static inline void rb_shm_init(rb_shm *s, uint64_t capacity, int32_t pid)
{
    memset(s, 0, sizeof(rb_shm));
    s->version = RB_SHM_VERSION;
    s->header_size = (uint32_t)sizeof(rb_shm);
    s->capacity = capacity;
    s->creator_pid = pid;
    atomic_init(&s->head, 0);
    atomic_init(&s->tail, 0);
    rb_event_init(&s->not_empty);
    rb_event_init(&s->not_full);
    /* magic last: an attacher that sees it sees a fully initialised header */
    atomic_thread_fence(memory_order_release);
    s->magic = RB_SHM_MAGIC;
}

/* 0 when a mapping of mapped bytes holds a channel this code understands;
   -1 bad magic, -2 other version, -3 sizes inconsistent. */
static inline int rb_shm_check(const rb_shm *s, uint64_t mapped)
{
    if (mapped < sizeof(rb_shm) || s->magic != RB_SHM_MAGIC)
        return -1;
    atomic_thread_fence(memory_order_acquire);
    if (s->version != RB_SHM_VERSION)
        return -2;
    if (s->header_size != sizeof(rb_shm) || s->capacity < 64 || (s->capacity & (s->capacity - 1)) != 0 ||
        rb_shm_mapping_size(s->capacity) > mapped)
        return -3;
    return 0;
}

/* Writes as many of n records as fit, in order, and publishes them at once.
   Returns how many. Lengths must be <= rb_shm_max_message. Producer only. */
static inline size_t rb_shm_send_batch(rb_shm *s, const void *const *bufs, const uint64_t *lens, size_t n)
{
    uint64_t head = atomic_load_explicit(&s->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_acquire);
    uint64_t cap = s->capacity, mask = cap - 1;
    size_t done = 0;
    for (; done < n; done++) {
        uint64_t len = lens[done];
        uint64_t need = rb_shm_record_size(len);
        uint64_t pos = head & mask;
        uint64_t gap = (cap - pos < need) ? cap - pos : 0;  /* skipped to keep the record whole */
        if (cap - (head - tail) < gap + need) {
            tail = atomic_load_explicit(&s->tail, memory_order_acquire);  /* maybe freed since */
            if (cap - (head - tail) < gap + need)
                break;
        }
        if (gap) {
            uint32_t wrap = RB_SHM_WRAP;
            memcpy(s->data + pos, &wrap, 4);
            head += gap;
            pos = 0;
        }
        uint32_t len32 = (uint32_t)len;
        memcpy(s->data + pos, &len32, 4);
        memcpy(s->data + pos + 4, bufs[done], len);
        head += need;
    }
    if (done) {
        atomic_store_explicit(&s->head, head, memory_order_release);
        rb_event_notify(&s->not_empty, 1);
    }
    return done;
}

/* Finds the oldest record without releasing it: 1 and payload and len set,
   0 when empty, -1 when the record is damaged. Skips a wrap marker (that much
   it does release). Consumer only. */
static inline int rb_shm_peek(rb_shm *s, const char **payload, uint64_t *len)
{
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
    if (tail == head)
        return 0;
    uint64_t mask = s->capacity - 1;
    uint32_t len32;
    memcpy(&len32, s->data + (tail & mask), 4);
    if (len32 == RB_SHM_WRAP) {
        tail += s->capacity - (tail & mask);
        atomic_store_explicit(&s->tail, tail, memory_order_release);
        rb_event_notify(&s->not_full, 1);  /* the skipped gap is room for the producer */
        if (tail == head)
            return 0;
        memcpy(&len32, s->data + (tail & mask), 4);
    }
    if (len32 > s->capacity - (tail & mask) - 4)
        return -1;  /* a damaged record: it would run past the end of the ring */
    *payload = s->data + (tail & mask) + 4;
    *len = len32;
    return 1;
}

/* Releases the record found by the last peek, so the producer may reuse it. */
static inline void rb_shm_release(rb_shm *s, uint64_t len)
{
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_relaxed);
    atomic_store_explicit(&s->tail, tail + rb_shm_record_size(len), memory_order_release);
    rb_event_notify(&s->not_full, 1);
}

/* Bytes in use (records, their length words and any wrap gap). */
static inline uint64_t rb_shm_used(rb_shm *s)
{
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_acquire);
    uint64_t head = atomic_load_explicit(&s->head, memory_order_acquire);
    return head - tail;
}

/* Waits (busy) until *word differs from seen or spin_ns pass: pause hints
   for the first microseconds, then sched_yield so that a peer sharing our
   core can run and answer. Bounded: it precedes a futex sleep, because once
   the receiver sleeps every message costs the sender a wake-up system call.
   Returns 1 when the word changed. */
static inline int rb_spin_until_changed(_Atomic uint64_t *word, uint64_t seen, int64_t spin_ns)
{
    if (spin_ns <= 0)
        return 0;
    int64_t start = rb_monotonic_ns(), now = start;
    while (now - start < spin_ns) {
        for (int i = 0; i < 32; i++) {
            if (atomic_load_explicit(word, memory_order_acquire) != seen)
                return 1;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#elif defined(__aarch64__)
            __asm__ __volatile__("yield");
#endif
        }
        now = rb_monotonic_ns();
        if (now - start > 2000)
            sched_yield();
    }
    return atomic_load_explicit(word, memory_order_acquire) != seen;
}

/* Waits until the ring may hold a record: spins up to spin_ns, then sleeps up
   to timeout_ns (< 0: no limit) on the futex. Returns 0 (look again),
   ETIMEDOUT or EINTR. Consumer only. */
static inline int rb_shm_wait_readable(rb_shm *s, int64_t spin_ns, int64_t timeout_ns)
{
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_relaxed);
    if (rb_spin_until_changed(&s->head, tail, spin_ns))
        return 0;
    uint32_t key = rb_event_prepare(&s->not_empty);
    if (atomic_load_explicit(&s->head, memory_order_seq_cst) != tail ||
        atomic_load_explicit(&s->sender_closed, memory_order_seq_cst)) {
        rb_event_cancel(&s->not_empty);
        return 0;
    }
    return rb_event_wait(&s->not_empty, key, timeout_ns, 1);
}

/* 1 when a record of len bytes (and the gap before it at the wrap) fits now. */
static inline int rb_shm_fits(rb_shm *s, uint64_t len, uint64_t tail)
{
    uint64_t head = atomic_load_explicit(&s->head, memory_order_relaxed);
    uint64_t need = rb_shm_record_size(len), pos = head & (s->capacity - 1);
    uint64_t gap = (s->capacity - pos < need) ? s->capacity - pos : 0;
    return s->capacity - (head - tail) >= gap + need;
}

/* Waits until a record of len bytes fits: spins, then sleeps as above. The
   room is checked again after prepare, so space freed between a failed send
   and this call is never slept through. Producer only. */
static inline int rb_shm_wait_writable(rb_shm *s, uint64_t len, int64_t spin_ns, int64_t timeout_ns)
{
    uint64_t tail = atomic_load_explicit(&s->tail, memory_order_acquire);
    if (rb_shm_fits(s, len, tail) || rb_spin_until_changed(&s->tail, tail, spin_ns))
        return 0;
    uint32_t key = rb_event_prepare(&s->not_full);
    if (rb_shm_fits(s, len, atomic_load_explicit(&s->tail, memory_order_seq_cst)) ||
        atomic_load_explicit(&s->receiver_closed, memory_order_seq_cst)) {
        rb_event_cancel(&s->not_full);
        return 0;
    }
    return rb_event_wait(&s->not_full, key, timeout_ns, 1);
}

/* Marks one side closed and wakes the other, wherever it sleeps. */
static inline void rb_shm_close_side(rb_shm *s, int sender)
{
    atomic_store_explicit(sender ? &s->sender_closed : &s->receiver_closed, 1, memory_order_seq_cst);
    rb_event_notify(&s->not_empty, 1);
    rb_event_notify(&s->not_full, 1);
}

#endif /* RB_SHM_H */
