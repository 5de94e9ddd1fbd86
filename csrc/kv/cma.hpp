// Cross-memory attach (process_vm_readv/writev) moves of a segment list between this process
// and a peer on the same node, plus the segment packing the shared-memory staging ring uses.
// A segment list is n rows of (src_address, dst_address, nbytes), int64, as kv::Plan gives it.
#pragma once
#include <atomic>
#include <cstdint>

namespace hauler::kv {

// Shared between the thread that moves and the ones that watch or cancel.
struct XferProgress {
  std::atomic<int64_t> bytes_done{0};     // leading bytes of the segment stream that landed
  std::atomic<int64_t> segments_done{0};  // leading segments that landed completely
  std::atomic<bool> cancel{false};        // checked between system calls
};

struct CmaResult {
  int64_t bytes_done = 0;
  int64_t segments_done = 0;
  int64_t calls = 0;  // system calls made
  int error = 0;      // 0, or the errno that stopped it (ESRCH, EFAULT, EPERM, ENOMEM, ECANCELED)
};

// Moves the segments: read = src is the peer's memory and dst ours, write = the reverse.
// Batches as many segments per call as IOV_MAX iovecs on each side allow (runs contiguous on
// one side merge into one iovec there), at most max_call_bytes per call; resumes partial
// transfers. pidfd >= 0 is polled before each call so a peer that exited (its pid maybe
// reused) stops the move with ESRCH instead of touching another process. Never throws for
// system errors (they come back in .error with the progress); throws InvalidArgument for a
// malformed list (negative size or address).
CmaResult cma_move(int pid, int pidfd, bool write, const int64_t* segs, int64_t n, int64_t max_call_bytes,
                   XferProgress* progress);

// Copies stream bytes [stream_off, stream_off + len) of the segments' column col (0 = src
// addresses, 1 = dst addresses) to buf (to_buf) or from buf into those addresses. The stream is
// the segments' bytes concatenated in row order.
void segments_stage(const int64_t* segs, int64_t n, int col, int64_t stream_off, uint8_t* buf, int64_t len,
                    bool to_buf);

// Lease table: one entry per block in a page shared by the owner and its readers. The owner
// (single writer) changes an entry seqlock-style: generation odd while it changes, even after.
// A reader snapshots the generations before its copy and verifies after it that none moved and
// that the lease's deadline (CLOCK_MONOTONIC, one clock for every process on the node) had not
// passed when the copy ended: the owner reuses a block only after revoking (generation moves)
// or after the deadline by the same clock, so a verified copy saw only leased bytes.
struct LeaseEntry {
  uint64_t gen;
  uint64_t lease_id;  // 0 = none
  int64_t deadline_ns;
  int64_t reserved;
};

int64_t monotonic_ns();
// Grants lease_id until deadline_ns on the blocks; returns -1 when granted, else the index in
// blocks of the first block under another live lease (nothing changed then).
int64_t lease_grant(LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n, uint64_t lease_id,
                    int64_t deadline_ns);
// Clears the entries of blocks that hold lease_id (release or revoke: their generation moves).
void lease_clear(LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n, uint64_t lease_id);
// Reader side. Fills gens; returns -1 when every block is under lease_id and live now, else the
// index of the first block that is not (the caller reads the entry to say why).
int64_t lease_snapshot(const LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n, uint64_t lease_id,
                       uint64_t* gens, int64_t* min_deadline);
// After the copy: -1 when no generation moved and now < min_deadline, else the index of the first
// block whose generation moved, or n when only the deadline passed.
int64_t lease_verify(const LeaseEntry* table, int64_t num_blocks, const int64_t* blocks, int64_t n, const uint64_t* gens,
                     int64_t min_deadline);

}  // namespace hauler::kv
