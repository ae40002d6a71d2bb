/* blocks.c: many allocations of 1.5 MiB (above `pagemig run`'s threshold, below a THP
 * region's 2 MiB: each is a region of base pages), each filled with a pattern of its own
 * and checked, a quarter of them freed and allocated again every round. Prints the number
 * of bad words and exits 1 if there is one. Usage: blocks [BLOCKS [ROUNDS]]. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t word(int i, size_t k, const uint64_t *b) {
    return ((uint64_t)i << 32) ^ k ^ (uint64_t)(uintptr_t)b;
}

int main(int argc, char **argv) {
    int nb = argc > 1 ? atoi(argv[1]) : 64, rounds = argc > 2 ? atoi(argv[2]) : 20;
    size_t n = ((size_t)3 << 20) / 2 / 8;
    uint64_t **b = calloc((size_t)nb, sizeof *b);
    unsigned seed = 1;
    long bad = 0;
    if (!b || nb < 1 || rounds < 1) return 2;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < nb; i++) {
            if (b[i] && (rand_r(&seed) & 3)) continue;
            free(b[i]);
            b[i] = malloc(n * 8);
            if (!b[i]) return 2;
            for (size_t k = 0; k < n; k++) b[i][k] = word(i, k, b[i]);
        }
        for (int i = 0; i < nb; i++)
            for (size_t k = 0; k < n; k++) bad += b[i][k] != word(i, k, b[i]);
    }
    printf("bad %ld\n", bad);
    return bad != 0;
}
