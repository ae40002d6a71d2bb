/* A C program tiering its own memory with pagemig: make a region, fill it, move its pages
 * to node 1 and back with move_pages(2)-shaped calls, check every byte and every page's
 * node, and show the counters. Built and run by crates/pagemig-capi/tests/c_example.rs:
 *
 *   cc -I crates/pagemig-capi/include crates/pagemig-capi/examples/tier.c \
 *      target/release/libpagemig_capi.a -lpthread -ldl -lm -o tier && ./tier
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pagemig.h"

#define PAGE 4096
#define LEN (16u << 20)

static int fail(const char *what) {
    fprintf(stderr, "tier: %s: %s\n", what, pagemig_last_error());
    return 1;
}

static uint64_t pattern(size_t i) { return (uint64_t)i * 0x9E3779B97F4A7C15ull ^ 0x5A5A; }

static int check(const uint64_t *words, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (words[i] != pattern(i)) {
            fprintf(stderr, "tier: word %zu lost\n", i);
            return 1;
        }
    return 0;
}

static int all_on(PagemigRegion *r, void **pages, int *status, size_t n, int node) {
    long rc = pagemig_move_pages(r, n, pages, NULL, status, 0);
    if (rc != 0) return fail("query");
    for (size_t i = 0; i < n; i++)
        if (status[i] != node) {
            fprintf(stderr, "tier: page %zu on %d, not %d\n", i, status[i], node);
            return 1;
        }
    return 0;
}

int main(int argc, char **argv) {
    const char *engine = argc > 1 ? argv[1] : "batch";
    if (pagemig_ctx_new("turbo", 2, 8u << 20) != NULL || strlen(pagemig_last_error()) == 0) {
        fprintf(stderr, "tier: an unknown engine was accepted\n");
        return 1;
    }
    PagemigCtx *ctx = pagemig_ctx_new(engine, 2, 64u << 20);
    if (!ctx) return fail("pagemig_ctx_new");
    for (uint32_t n = 0; n < pagemig_ctx_nr_nodes(ctx); n++) {
        PagemigNodeInfo info;
        if (pagemig_node_info(ctx, n, &info) != 0) return fail("pagemig_node_info");
        printf("node %u: %llu MiB, %llu MiB free, %s\n", n,
               (unsigned long long)(info.total_bytes >> 20),
               (unsigned long long)(info.free_bytes >> 20),
               info.host_node < 0 ? "a pool of this host's one NUMA node" : "a host NUMA node");
    }
    PagemigRegion *r = pagemig_region_new(ctx, LEN, 0, 0);
    if (!r) return fail("pagemig_region_new");
    uint64_t *words = pagemig_region_addr(r);
    size_t nwords = pagemig_region_len(r) / sizeof(uint64_t);
    for (size_t i = 0; i < nwords; i++) words[i] = pattern(i);

    size_t n = LEN / PAGE;
    void **pages = malloc(n * sizeof *pages);
    int *nodes = malloc(n * sizeof *nodes);
    int *status = malloc(n * sizeof *status);
    if (!pages || !nodes || !status) return 1;
    for (size_t i = 0; i < n; i++) pages[i] = (char *)words + i * PAGE;
    if (all_on(r, pages, status, n, 0)) return 1;
    for (int round = 0; round < 4; round++) {
        int to = 1 - round % 2;
        for (size_t i = 0; i < n; i++) nodes[i] = to;
        long rc = pagemig_move_pages(r, n, pages, nodes, status, PAGEMIG_MPOL_MF_MOVE);
        if (rc != 0) return fail("pagemig_move_pages");
        if (all_on(r, pages, status, n, to) || check(words, nwords)) return 1;
        printf("round %d: %zu pages on node %d, every word intact\n", round, n, to);
    }
    /* The man page's statuses: an address outside the region is -EFAULT in its status,
     * and, as for the system call, not counted in the return value. */
    void *outside = (char *)words + LEN;
    int st = 0, to = 1;
    long rc = pagemig_move_pages(r, 1, &outside, &to, &st, PAGEMIG_MPOL_MF_MOVE);
    if (rc != 0 || st != -EFAULT) {
        fprintf(stderr, "tier: outside the region gave %ld, status %d\n", rc, st);
        return 1;
    }
    if (pagemig_move_pages(r, 1, pages, &to, &st, 0x80) != -EINVAL) {
        fprintf(stderr, "tier: bad flags were accepted\n");
        return 1;
    }
    PagemigCounters c;
    if (pagemig_counters(ctx, &c) != 0) return fail("pagemig_counters");
    printf("pgmigrate_success %llu, pgmigrate_fail %llu, pages moved out %llu, in %llu\n",
           (unsigned long long)c.pgmigrate_success, (unsigned long long)c.pgmigrate_fail,
           (unsigned long long)c.pages_unmapped, (unsigned long long)c.pages_remapped);
    if (c.pgmigrate_success < 4 * n) {
        fprintf(stderr, "tier: only %llu pages migrated\n", (unsigned long long)c.pgmigrate_success);
        return 1;
    }
    free(pages);
    free(nodes);
    free(status);
    pagemig_ctx_free(ctx); /* the region keeps the memory alive */
    pagemig_region_free(r);
    printf("ok\n");
    return 0;
}
