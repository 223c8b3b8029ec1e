#pragma once
// How the process's heap treats freed memory.

namespace moesim {

// Every training step allocates and frees the same large temporaries. By default glibc
// serves them with mmap and returns them on free, so each step pays page faults and TLB
// flushes for fresh pages (measured: a third of the system time and up to 30% of a small
// model's step). Keeping them in the heap, untrimmed, reuses the same pages; its first 48 MiB
// are advised for huge pages (core/huge_pages: 64,256,8,2,4096 on 2 ranks, 6 alternating
// pairs, 0.685 -> 0.71 of the sgemm limit). Call once, first thing in main; RuntimeError if
// the C library refuses (elsewhere than glibc: nothing to do).
void keep_freed_memory();

}  // namespace moesim
