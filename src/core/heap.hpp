#pragma once
// How the process's heap treats freed memory.

namespace moesim {

// Every training step allocates and frees the same large temporaries. By default glibc
// serves them with mmap and returns them on free, so each step pays page faults and TLB
// flushes for fresh pages (measured: a third of the system time and up to 30% of a small
// model's step). Keeping them in the heap, untrimmed, reuses the same pages. Call once, first
// thing in main; RuntimeError if the C library refuses (elsewhere than glibc: nothing to do).
void keep_freed_memory();

}  // namespace moesim
