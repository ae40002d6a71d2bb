/* What a program may do with its memory under `pagemig run`, checked by the program itself
 * while pagemig moves that memory between nodes: realloc, calloc, MADV_DONTNEED and
 * MADV_FREE, partial munmap, mremap, mprotect, system calls reading and writing it (kernel-
 * mode faults), threads, and fork (a child sees the memory as it was at the fork, and tiers
 * memory of its own). Prints one line per check and exits 1 at the first wrong byte. Under
 * `pagemig run` (PAGEMIG_RUN_THRESHOLD set) it also checks that its large blocks, malloc'd
 * and mmap'd, are tiered: their mappings are registered with a userfaultfd ("um" in their
 * VmFlags in /proc/self/smaps). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MiB (1UL << 20)

static uint64_t pat(uint64_t seed, size_t i) { return (seed * 0x9E3779B97F4A7C15ULL) ^ (i * 0xBF58476D1CE4E5B9ULL); }
static void fill(uint64_t *p, size_t n, uint64_t seed) { for (size_t i = 0; i < n; i++) p[i] = pat(seed, i); }
static size_t bad(const uint64_t *p, size_t n, uint64_t seed) {
    size_t b = 0;
    for (size_t i = 0; i < n; i++) b += p[i] != pat(seed, i);
    return b;
}
static int zero(const void *v, size_t len) {
    const uint64_t *p = v;
    for (size_t i = 0; i < len / 8; i++) if (p[i]) return 0;
    return 1;
}
#define CHECK(c, what) do { if (!(c)) { printf("FAIL %s (round %d)\n", what, round); fflush(stdout); exit(1); } } while (0)

/* Whether the mapping holding p is registered with a userfaultfd for missing faults. */
static int uffd_registered(const void *p) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[512];
    int in = 0, yes = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char c;
        if (sscanf(line, "%lx-%lx %c", &lo, &hi, &c) == 3) {
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        } else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            yes = strstr(line, " um") != NULL;
            break;
        }
    }
    fclose(f);
    return yes;
}
#define TIERED(p, what) do { if (getenv("PAGEMIG_RUN_THRESHOLD")) CHECK(uffd_registered(p), what " is tiered"); } while (0)

static void *writer(void *arg) {
    uint64_t seed = (uintptr_t)arg;
    size_t n = 24 * MiB / 8;
    uint64_t *p = malloc(n * 8);
    for (int r = 0; r < 6; r++) {
        fill(p, n, seed + r);
        if (bad(p, n, seed + r)) return (void *)1;
    }
    free(p);
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    for (int round = 0; round < rounds; round++) {
        /* realloc keeps the bytes; calloc is zero */
        size_t n = 32 * MiB / 8;
        uint64_t *a = malloc(n * 8);
        TIERED(a, "malloc");
        fill(a, n, 1 + round);
        a = realloc(a, 2 * n * 8);
        CHECK(a && !bad(a, n, 1 + round), "realloc");
        free(a);
        void *z = calloc(16, MiB);
        CHECK(z && zero(z, 16 * MiB), "calloc");
        free(z);

        /* madvise */
        uint64_t *m = mmap(NULL, 16 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(m != MAP_FAILED, "mmap");
        TIERED(m, "mmap");
        fill(m, 16 * MiB / 8, 7);
        CHECK(madvise((char *)m + 4 * MiB, 4 * MiB, MADV_DONTNEED) == 0, "madvise");
        CHECK(!bad(m, 4 * MiB / 8, 7) && zero((char *)m + 4 * MiB, 4 * MiB), "MADV_DONTNEED reads zero");
        CHECK(madvise((char *)m + 8 * MiB, 4 * MiB, MADV_FREE) == 0, "MADV_FREE");
        for (size_t i = 8 * MiB / 8; i < 12 * MiB / 8; i++)
            CHECK(m[i] == pat(7, i) || m[i] == 0, "MADV_FREE keeps or zeroes");
        m[5 * MiB / 8] = 42;
        CHECK(m[5 * MiB / 8] == 42 && !bad(m + 12 * MiB / 8, 0, 7), "write after DONTNEED");
        CHECK(munmap(m, 16 * MiB) == 0, "munmap");

        /* partial munmap, then the rest */
        uint64_t *u = mmap(NULL, 8 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        TIERED(u, "mmap");
        fill(u, 8 * MiB / 8, 9);
        CHECK(munmap(u, 2 * MiB) == 0, "partial munmap");
        for (size_t i = 2 * MiB / 8; i < 8 * MiB / 8; i++) CHECK(u[i] == pat(9, i), "the rest after a partial munmap");
        CHECK(munmap(u + 2 * MiB / 8, 6 * MiB) == 0, "munmap of the rest");

        /* mremap */
        uint64_t *r = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        TIERED(r, "mmap");
        fill(r, 4 * MiB / 8, 11);
        r = mremap(r, 4 * MiB, 8 * MiB, MREMAP_MAYMOVE);
        CHECK(r != MAP_FAILED && !bad(r, 4 * MiB / 8, 11) && zero(r + 4 * MiB / 8, 4 * MiB), "mremap");
        munmap(r, 8 * MiB);

        /* mprotect */
        uint64_t *q = mmap(NULL, 4 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        TIERED(q, "mmap");
        fill(q, 4 * MiB / 8, 13);
        CHECK(mprotect(q, 4 * MiB, PROT_READ) == 0 && !bad(q, 4 * MiB / 8, 13), "mprotect read-only");
        CHECK(mprotect(q, 4 * MiB, PROT_READ | PROT_WRITE) == 0, "mprotect back");
        q[0] = 1;
        munmap(q, 4 * MiB);

        /* system calls on the memory: a pipe from one region into another */
        size_t len = 8 * MiB;
        uint64_t *src = malloc(len), *dst = malloc(len);
        fill(src, len / 8, 17);
        memset(dst, 0, len);
        int fds[2];
        CHECK(pipe(fds) == 0, "pipe");
        pid_t w = fork();
        if (w == 0) {
            size_t off = 0;
            while (off < len) { ssize_t k = write(fds[1], (char *)src + off, len - off); if (k <= 0) _exit(2); off += k; }
            _exit(0);
        }
        close(fds[1]);
        size_t got = 0;
        while (got < len) { ssize_t k = read(fds[0], (char *)dst + got, len - got); CHECK(k > 0, "read into the memory"); got += k; }
        close(fds[0]);
        int st;
        waitpid(w, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && !bad(dst, len / 8, 17), "write and read through a pipe");
        /* and a system call writing straight into it */
        FILE *f = tmpfile();
        fwrite(src, 1, len, f);
        rewind(f);
        memset(dst, 0, len);
        CHECK(fread(dst, 1, len, f) == len && !bad(dst, len / 8, 17), "fread into the memory");
        fclose(f);
        free(src);
        free(dst);

        /* threads */
        pthread_t t[2];
        void *res[2];
        for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, writer, (void *)(uintptr_t)(100 + i));
        for (int i = 0; i < 2; i++) pthread_join(t[i], &res[i]);
        CHECK(!res[0] && !res[1], "threads");

        /* fork: the child sees the memory as it was, the parent goes on writing */
        size_t fn = 48 * MiB / 8;
        uint64_t *big = malloc(fn * 8);
        TIERED(big, "malloc");
        fill(big, fn, 19);
        for (int k = 0; k < 4; k++) {
            pid_t c = fork();
            if (c == 0) {
                if (bad(big, fn, 19 + k)) _exit(1);
                uint64_t *own = malloc(16 * MiB); /* new memory of its own */
                TIERED(own, "a forked child's malloc");
                fill(own, 16 * MiB / 8, 23);
                _exit(bad(own, 16 * MiB / 8, 23) ? 1 : 0);
            }
            fill(big, fn, 19 + k + 1);
            int cs;
            waitpid(c, &cs, 0);
            CHECK(WIFEXITED(cs) && WEXITSTATUS(cs) == 0, "fork: the child sees the memory as it was");
            CHECK(!bad(big, fn, 19 + k + 1), "fork: the parent's writes");
        }
        free(big);
        printf("round %d ok\n", round);
        fflush(stdout);
    }
    return 0;
}
