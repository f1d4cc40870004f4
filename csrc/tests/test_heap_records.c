/* rb_heap.h and rb_records.h against simple models, without Python.
   Built and run by tests/test_csrc.py under AddressSanitizer/UBSan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_heap.h"
#include "rb_records.h"

#define N 20000

static int check_heap(void)
{
    rb_heap h;
    static int64_t prio_of[N];
    if (rb_heap_init(&h, 0) != 0)
        return 1;
    srand(7);
    for (size_t i = 0; i < N; i++) {
        prio_of[i] = (rand() % 21) - 10;
        if (rb_heap_push(&h, (void *)(uintptr_t)(i + 1), prio_of[i]) != 1)
            return 1;
    }
    int64_t last_prio = INT64_MAX;
    size_t last_index = 0;
    for (size_t n = 0; n < N; n++) {
        void *out;
        if (!rb_heap_pop(&h, &out))
            return 1;
        size_t index = (size_t)(uintptr_t)out - 1;
        int64_t p = prio_of[index];
        /* priorities never rise; equal priorities come out in push order */
        if (p > last_prio || (p == last_prio && index < last_index)) {
            fprintf(stderr, "heap order broken at pop %zu\n", n);
            return 1;
        }
        last_prio = p;
        last_index = index;
    }
    void *out;
    int empty_ok = rb_heap_pop(&h, &out) == 0;
    rb_heap_free(&h);

    rb_heap bounded;
    if (rb_heap_init(&bounded, 3) != 0)
        return 1;
    int bound_ok = rb_heap_push(&bounded, NULL, 0) == 1 && rb_heap_push(&bounded, NULL, 0) == 1 &&
                   rb_heap_push(&bounded, NULL, 0) == 1 && rb_heap_push(&bounded, NULL, 0) == 0;
    rb_heap_free(&bounded);
    return !(empty_ok && bound_ok);
}

static int check_records(void)
{
    rb_records r;
    double model[64], in[64], out[64];
    size_t model_head = 0, model_size = 0, next = 0;
    if (rb_records_init(&r, sizeof(double), 37) != 0)
        return 1;
    srand(11);
    for (int step = 0; step < 100000; step++) {
        size_t n = (size_t)(rand() % 40);
        if (rand() % 2) {
            for (size_t i = 0; i < n; i++)
                in[i] = (double)next++;
            size_t wrote = rb_records_write(&r, in, n);
            size_t expect = n < 37 - model_size ? n : 37 - model_size;
            if (wrote != expect)
                return 1;
            for (size_t i = 0; i < wrote; i++)
                model[(model_head + model_size + i) % 64] = in[i];
            model_size += wrote;
            next -= n - wrote;
        } else {
            size_t got = rb_records_read(&r, out, n);
            size_t expect = n < model_size ? n : model_size;
            if (got != expect)
                return 1;
            for (size_t i = 0; i < got; i++)
                if (out[i] != model[(model_head + i) % 64])
                    return 1;
            model_head = (model_head + got) % 64;
            model_size -= got;
        }
        if (r.size != model_size)
            return 1;
    }
    rb_records_free(&r);
    return 0;
}

int main(void)
{
    int heap = check_heap();
    int records = check_records();
    printf("heap: %s, records: %s\n", heap ? "FAILED" : "ok", records ? "FAILED" : "ok");
    return heap || records;
}
