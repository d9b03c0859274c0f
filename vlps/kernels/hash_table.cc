// vlps's hash table: an open-addressing int64 -> float32[width] table for TensorFlow.
//
// It implements TensorFlow's LookupInterface, so the stock lookup ops (LookupTableFindV2,
// InsertV2, RemoveV2, ExportV2, ImportV2, SizeV2) and the Python tf.lookup classes work on it;
// only the table's creation op, VlpsHashTable, is new. What it does differently from
// MutableDenseHashTable, TensorFlow's closest table:
//  - Finds and the slot search of inserts run on the CPU worker threads, in blocks that issue
//    the memory loads of the next ids ahead of time (software prefetch), so a large table's
//    cache misses overlap instead of being paid one id after another.
//  - A row is copied with memcpy, not element by element.
//  - Linear probing with backward-shift deletion: a remove leaves no tombstone, so there is
//    no deleted-key state (no reserved key but one: the empty marker, whose own id is kept in
//    a slot beside the buckets, so every int64 id is usable) and a re-inserted key can never
//    exist twice.
//  - The table grows (doubles) only when the rows really present would pass the load factor,
//    counting the new keys of an insert, not every key of the batch.
// An insert replaces whole rows under the table's exclusive lock; finds and exports read
// under its shared lock: a checkpoint's export sees each row either before or after an update.

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <string>
#include <memory>
#include <vector>

#include "tensorflow/core/framework/device_base.h"
#include "tensorflow/core/framework/lookup_interface.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/lookup_table_op.h"
#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/util/work_sharder.h"
#include "vlps/kernels/mix.h"
#include "vlps/kernels/rules.h"

namespace vlps {

using ::tensorflow::DataType;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;

namespace {

constexpr int64_t kEmpty = INT64_MIN;
// How many ids ahead a block issues its loads.
constexpr int64_t kAhead = 12;
// Ids per block of work on the CPU worker threads. Fixed, small blocks (18 for a batch's 37,000
// unique ids) let one thread take over the blocks of a thread that another (the input
// pipeline) keeps off its core; with TensorFlow's cost-based sharder (a few large blocks) a
// find of 37,000 ids took 3.4 ms beside a busy process on two cores, 2.5 ms with these.
constexpr int64_t kBlock = 2048;

// murmur3's finaliser over the id xor a constant: independent of vlps.hashing.shard_of's
// mix, so the ids of one shard do not share their low bits here.
inline uint64_t Mix(uint64_t x) { return Murmur3Mix(x ^ 0x2545F4914F6CDD1DULL); }

// vlps.hashing's per-id random numbers: SplitMix64's finaliser and the golden-ratio word.
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
inline uint64_t SplitMix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// The table's arrays: malloc'd, never initialised here (see Reset).
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using Array = std::unique_ptr<T[], FreeDeleter>;

template <typename T>
Array<T> AllocateArray(int64_t n) {
  void* p = std::malloc(std::max<size_t>(static_cast<size_t>(n) * sizeof(T), 1));
  if (p == nullptr) throw std::bad_alloc();
  return Array<T>(static_cast<T*>(p));
}

// Loads every cache line of a row's first `width` floats (a row need not start on a line).
inline void PrefetchRow(const float* row, int64_t width) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(row) & ~uintptr_t{63};
  const uintptr_t last = reinterpret_cast<uintptr_t>(row + width) - 1;
  for (uintptr_t line = first; line <= last; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line));
}

}  // namespace

class HashTable : public ::tensorflow::lookup::LookupInterface {
 public:
  HashTable(OpKernelContext* ctx, OpKernel* kernel) {
    OP_REQUIRES_OK(ctx, ::tensorflow::GetNodeAttr(kernel->def(), "value_shape", &value_shape_));
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(value_shape_) && value_shape_.dim_size(0) > 0,
                ::tensorflow::errors::InvalidArgument(
                    "VlpsHashTable: value_shape must be a non-empty vector, got ",
                    value_shape_.DebugString()));
    width_ = value_shape_.dim_size(0);
    row_bytes_ = width_ * sizeof(float);
    int64_t buckets = 0;
    OP_REQUIRES_OK(ctx, ::tensorflow::GetNodeAttr(kernel->def(), "initial_num_buckets", &buckets));
    OP_REQUIRES_OK(ctx, ::tensorflow::GetNodeAttr(kernel->def(), "max_load_factor",
                                                  &max_load_factor_));
    OP_REQUIRES(ctx, max_load_factor_ > 0 && max_load_factor_ < 1,
                ::tensorflow::errors::InvalidArgument(
                    "VlpsHashTable: max_load_factor must be in (0, 1), got ", max_load_factor_));
    OP_REQUIRES(ctx, buckets >= 2 && (buckets & (buckets - 1)) == 0,
                ::tensorflow::errors::InvalidArgument(
                    "VlpsHashTable: initial_num_buckets must be a power of two >= 2, got ",
                    buckets));
    mu_.lock();
    Reset(buckets);
    empty_row_.resize(width_);
    mu_.unlock();
  }

  size_t size() const override {
    ::tensorflow::tf_shared_lock l(mu_);
    return static_cast<size_t>(size_ + (has_empty_key_ ? 1 : 0));
  }

  int64_t buckets() const {
    ::tensorflow::tf_shared_lock l(mu_);
    return capacity_;
  }

  int64_t MemoryUsed() const override {
    ::tensorflow::tf_shared_lock l(mu_);
    return capacity_ * static_cast<int64_t>(sizeof(int64_t) + width_ * sizeof(float));
  }

  DataType key_dtype() const override { return ::tensorflow::DT_INT64; }
  DataType value_dtype() const override { return ::tensorflow::DT_FLOAT; }
  TensorShape key_shape() const override { return TensorShape(); }
  TensorShape value_shape() const override { return value_shape_; }

  absl::Status Find(OpKernelContext* ctx, const Tensor& key, Tensor* value,
                    const Tensor& default_value) override {
    const int64_t n = key.NumElements();
    if (n == 0) return absl::OkStatus();
    if (default_value.NumElements() != width_) {
      return ::tensorflow::errors::InvalidArgument(
          "VlpsHashTable: the default value must have ", width_, " elements, got ",
          default_value.NumElements());
    }
    const int64_t* ids = key.flat<int64_t>().data();
    float* out = value->flat<float>().data();
    const float* dflt = default_value.flat<float>().data();
    ::tensorflow::tf_shared_lock l(mu_);
    ForBlocks(ctx, n, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> slot(end - begin);
      Locate(ids, begin, end, slot.data());
      for (int64_t i = begin; i < end; ++i) {
        const int64_t ahead = i + kAhead;
        if (ahead < end && slot[ahead - begin] >= 0)
          PrefetchRow(rows_.get() + slot[ahead - begin] * width_, width_);
        std::memcpy(out + i * width_, RowOf(slot[i - begin], dflt), row_bytes_);
      }
    });
    return absl::OkStatus();
  }

  absl::Status Insert(OpKernelContext* ctx, const Tensor& keys, const Tensor& values) override {
    const int64_t n = keys.NumElements();
    if (n == 0) return absl::OkStatus();
    const int64_t* ids = keys.flat<int64_t>().data();
    const float* rows = values.flat<float>().data();
    ChangeLock l(this);
    return InsertLocked(ctx, ids, rows, n);
  }

  // One optimizer step on whole rows, written straight into the table: row i of `rows` (the
  // id's current row as the caller pulled it, or its initial row for a new id) updated with
  // `grads` row i, stamped with `step`. The same arithmetic, in the same order, as the rule's
  // TensorFlow ops in vlps/optimizers.py, without the slices, concatenation and copy of the
  // row that the unfused push pays. Layout: [embedding (dim) | slots (dim each) | step].
  enum class Rule { kSgd, kAdagrad };
  absl::Status Apply(OpKernelContext* ctx, const Tensor& keys, const Tensor& rows,
                     const Tensor& grads, int64_t step, Rule rule, float lr, float epsilon,
                     int64_t dim) {
    const int64_t n = keys.NumElements();
    const int64_t slots = rule == Rule::kAdagrad ? 1 : 0;
    if (width_ != dim * (1 + slots) + 1)
      return ::tensorflow::errors::InvalidArgument(
          "VlpsHashTableApply: rows of width ", width_, " do not fit dim ", dim, " with ",
          slots, " slot(s) and a step");
    if (rows.NumElements() != n * width_ || grads.NumElements() != n * dim)
      return ::tensorflow::errors::InvalidArgument(
          "VlpsHashTableApply: ", n, " ids need ", n, "x", width_, " rows and ", n, "x", dim,
          " gradients, got ", rows.shape().DebugString(), " and ", grads.shape().DebugString());
    if (n == 0) return absl::OkStatus();
    const int64_t* ids = keys.flat<int64_t>().data();
    const float* in = rows.flat<float>().data();
    const float* g = grads.flat<float>().data();
    const int32_t step32 = static_cast<int32_t>(step);
    float stamp;
    std::memcpy(&stamp, &step32, sizeof(stamp));
    const int64_t width = width_;
    ChangeLock l(this);
    return WriteLocked(ctx, ids, n, [=](int64_t i, float* dst, bool) {
      UpdateRow(rule, lr, epsilon, dim, in + i * width, g + i * dim, stamp, dst);
    });
  }

  // One optimizer step on a row [embedding | slots | step] read from `row` (which may be
  // `dst` itself) and written to `dst`, stamped with `stamp`.
  static void UpdateRow(Rule rule, float lr, float epsilon, int64_t dim, const float* row,
                        const float* g, float stamp, float* dst) {
    if (rule == Rule::kSgd) {
      SgdStep(row, g, lr, dim, dst);
      dst[dim] = stamp;
      return;
    }
    AdagradStep(row, row + dim, g, lr, epsilon, dim, dst, dst + dim);
    dst[2 * dim] = stamp;
  }

  // How a missing id's row starts: per column group of the embedding a kind (zeros, a
  // constant, or uniform from the id's hash), then the optimizer's slot values, then step 0.
  // The same bits as vlps/initializers.py and vlps.hashing.uniform01 compute with TF ops.
  struct InitGroup {
    enum Kind { kZeros, kConstant, kUniform } kind;
    int64_t width;
    float a;  // the constant, or the uniform's minval
    float b;  // the uniform's (maxval - minval)
    uint64_t seed_word;  // seed * golden ratio, the hash's key
  };

  // Find whole rows; a missing id gets its initial row. Writes `rows` [n, width] (unless
  // null) and the embedding columns `emb` [n, dim] (what the model reads), returns how many
  // were missing. With `buckets` (not null) also each id's bucket (kMissing for a missing id)
  // and in `*generation` the table's generation they belong to: a push that finds the table
  // at that generation reuses them instead of searching again (ApplyInPlace).
  // Reads under the shared lock: nothing is inserted (the push creates the rows).
  int64_t FindOrInit(OpKernelContext* ctx, const int64_t* ids, int64_t n, int64_t dim,
                     const std::vector<InitGroup>& groups, const std::vector<float>& slots,
                     float* rows, float* emb, int64_t* buckets = nullptr,
                     int64_t* generation = nullptr) const {
    std::atomic<int64_t> missing{0};
    const int64_t width = width_;
    // Without `rows` only the embedding columns are read: load just those ahead.
    const int64_t read = rows != nullptr ? width : dim;
    ::tensorflow::tf_shared_lock l(mu_);
    if (generation != nullptr) *generation = static_cast<int64_t>(generation_);
    ForBlocks(ctx, n, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> slot(end - begin);
      std::vector<float> scratch(rows == nullptr ? width : 0);
      Locate(ids, begin, end, slot.data());
      if (buckets != nullptr) std::copy(slot.begin(), slot.end(), buckets + begin);
      int64_t absent = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t ahead = i + kAhead;
        if (ahead < end && slot[ahead - begin] >= 0)
          PrefetchRow(rows_.get() + slot[ahead - begin] * width, read);
        const int64_t s = slot[i - begin];
        const float* src;
        if (s >= 0 || s == kEmptyKeySlot) {
          src = s >= 0 ? rows_.get() + s * width : empty_row_.data();
          if (rows != nullptr) std::memcpy(rows + i * width, src, row_bytes_);
        } else {
          ++absent;
          float* dst = rows != nullptr ? rows + i * width : scratch.data();
          InitialRow(ids[i], groups, slots, dst);
          src = dst;
        }
        std::memcpy(emb + i * dim, src, dim * sizeof(float));
      }
      missing.fetch_add(absent, std::memory_order_relaxed);
    });
    return missing.load();
  }

  static void InitialRow(int64_t id, const std::vector<InitGroup>& groups,
                         const std::vector<float>& slots, float* dst) {
    int64_t c = 0;
    for (const InitGroup& g : groups) {
      if (g.kind == InitGroup::kUniform) {
        const uint64_t base = SplitMix64(static_cast<uint64_t>(id) ^ g.seed_word);
        for (int64_t j = 0; j < g.width; ++j) {
          const uint64_t bits = SplitMix64(base + static_cast<uint64_t>(j + 1) * kGolden);
          const float u = (static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f);
          dst[c + j] = g.a + g.b * u;
        }
      } else {
        const float v = g.kind == InitGroup::kConstant ? g.a : 0.0f;
        for (int64_t j = 0; j < g.width; ++j) dst[c + j] = v;
      }
      c += g.width;
    }
    SlotsAndStep(slots, dst + c);
  }

  // The end of an initial row: the optimizer's slot values, then step 0 (the row exists
  // from its first push on).
  static void SlotsAndStep(const std::vector<float>& slots, float* dst) {
    std::copy(slots.begin(), slots.end(), dst);
    dst[slots.size()] = 0.0f;
  }

  // A new id's initial row from its initial embedding as FindOrInit returned it: the same
  // bits as InitialRow.
  static void InitialRowFrom(const float* emb, int64_t dim, const std::vector<float>& slots,
                             float* dst) {
    std::memcpy(dst, emb, dim * sizeof(float));
    SlotsAndStep(slots, dst + dim);
  }

  // The push without the pulled rows: each id's current row is updated where it lies, and a
  // new id's bucket first gets its initial row (as FindOrInit computes it). Under the
  // exclusive lock, so the row read is the row written: the result equals the pull's rows
  // when nothing changed the shard in between, and the current rows when something did. The
  // ids must be unique. Returns in `*created` how many ids were new.
  // `buckets`, `generation` and `pulled` are what the pull's FindOrInit returned for the same
  // ids (empty tensors when there was none): if the table is still at that generation (nothing
  // changed it since), the ids' buckets are those, and a new id's initial row is built from
  // its pulled embedding, so the push neither searches nor hashes again.
  absl::Status ApplyInPlace(OpKernelContext* ctx, const Tensor& keys, const Tensor& grads,
                            int64_t step, Rule rule, float lr, float epsilon, int64_t dim,
                            const std::vector<InitGroup>& groups,
                            const std::vector<float>& slot_values, const Tensor& buckets,
                            int64_t generation, const Tensor& pulled, int64_t* created) {
    const int64_t n = keys.NumElements();
    const int64_t slots = rule == Rule::kAdagrad ? 1 : 0;
    if (width_ != dim * (1 + slots) + 1 ||
        static_cast<int64_t>(slot_values.size()) != dim * slots)
      return ::tensorflow::errors::InvalidArgument(
          "VlpsHashTableApplyInPlace: rows of width ", width_, " do not fit dim ", dim,
          " with ", slots, " slot(s) and a step");
    if (grads.NumElements() != n * dim)
      return ::tensorflow::errors::InvalidArgument(
          "VlpsHashTableApplyInPlace: ", n, " ids need ", n, "x", dim, " gradients, got ",
          grads.shape().DebugString());
    *created = 0;
    if (n == 0) return absl::OkStatus();
    const int64_t* ids = keys.flat<int64_t>().data();
    const float* g = grads.flat<float>().data();
    const int32_t step32 = static_cast<int32_t>(step);
    float stamp;
    std::memcpy(&stamp, &step32, sizeof(stamp));
    ChangeLock l(this);
    bool reuse = buckets.NumElements() == n && pulled.NumElements() == n * dim &&
                 generation == static_cast<int64_t>(l.before());
    if (reuse) {  // buckets from anywhere but FindOrInit must not write outside the table
      const int64_t* b = buckets.flat<int64_t>().data();
      for (int64_t i = 0; i < n && reuse; ++i)
        reuse = b[i] < capacity_ && (b[i] >= 0 || b[i] == kMissing || b[i] == kEmptyKeySlot);
    }
    const int64_t* known = reuse ? buckets.flat<int64_t>().data() : nullptr;
    const float* emb = reuse ? pulled.flat<float>().data() : nullptr;
    return WriteLocked(ctx, ids, n, [&, g, emb, dim, lr, epsilon, stamp, rule](
        int64_t i, float* dst, bool fresh) {
      if (fresh) {
        if (emb != nullptr) {
          InitialRowFrom(emb + i * dim, dim, slot_values, dst);
        } else {
          InitialRow(ids[i], groups, slot_values, dst);
        }
      }
      UpdateRow(rule, lr, epsilon, dim, dst, g + i * dim, stamp, dst);
    }, created, known);
  }

  // Eviction in place: the ids of rows last updated before step - ttl (ttl > 0), then, while
  // more than `cap` rows remain (cap > 0), the least recently updated of the rest (ties: the
  // earlier in export order), oldest first; all of them removed. The same choice as exporting
  // the rows and selecting with top_k, without copying the table. The step is the row's last
  // float, an int32 bit-cast.
  void Evict(int64_t step, int64_t ttl, int64_t cap, std::vector<int64_t>* gone,
             int64_t* n_ttl, int64_t* n_cap) {
    ChangeLock l(this);
    struct Live {
      int32_t last;
      int64_t position;
      int64_t key;
    };
    std::vector<Live> live;
    live.reserve(size_);
    auto visit = [&](int64_t key, const float* row, int64_t position) {
      int32_t last;
      std::memcpy(&last, row + width_ - 1, sizeof(last));
      if (ttl > 0 && last < step - ttl) {
        gone->push_back(key);
      } else {
        live.push_back({last, position, key});
      }
    };
    for (int64_t s = 0; s < capacity_; ++s)
      if (keys_[s] != kEmpty) visit(keys_[s], rows_.get() + s * width_, s);
    if (has_empty_key_) visit(kEmpty, empty_row_.data(), capacity_);
    *n_ttl = static_cast<int64_t>(gone->size());
    const int64_t excess =
        cap > 0 ? std::max<int64_t>(static_cast<int64_t>(live.size()) - cap, 0) : 0;
    auto older = [](const Live& a, const Live& b) {
      return a.last != b.last ? a.last < b.last : a.position < b.position;
    };
    std::partial_sort(live.begin(), live.begin() + excess, live.end(), older);
    for (int64_t i = 0; i < excess; ++i) gone->push_back(live[i].key);
    *n_cap = excess;
    for (int64_t key : *gone) {
      if (key == kEmpty) {
        has_empty_key_ = false;
        continue;
      }
      const int64_t s = Probe(key);
      if (s >= 0) Erase(s);
    }
  }

  absl::Status Remove(OpKernelContext* ctx, const Tensor& keys) override {
    const int64_t n = keys.NumElements();
    const int64_t* ids = keys.flat<int64_t>().data();
    ChangeLock l(this);
    for (int64_t i = 0; i < n; ++i) {
      if (ids[i] == kEmpty) {
        has_empty_key_ = false;
        continue;
      }
      const int64_t s = Probe(ids[i]);
      if (s >= 0) Erase(s);
    }
    return absl::OkStatus();
  }

  absl::Status ExportValues(OpKernelContext* ctx) override {
    ::tensorflow::tf_shared_lock l(mu_);
    const int64_t total = size_ + (has_empty_key_ ? 1 : 0);
    Tensor* keys;
    Tensor* values;
    TF_RETURN_IF_ERROR(ctx->allocate_output("keys", TensorShape({total}), &keys));
    TF_RETURN_IF_ERROR(ctx->allocate_output("values", TensorShape({total, width_}), &values));
    int64_t* k = keys->flat<int64_t>().data();
    float* v = values->flat<float>().data();
    int64_t j = 0;
    for (int64_t s = 0; s < capacity_; ++s) {
      if (keys_[s] == kEmpty) continue;
      k[j] = keys_[s];
      std::memcpy(v + j * width_, rows_.get() + s * width_, row_bytes_);
      ++j;
    }
    if (has_empty_key_) {
      k[j] = kEmpty;
      std::memcpy(v + j * width_, empty_row_.data(), row_bytes_);
    }
    return absl::OkStatus();
  }

  absl::Status ImportValues(OpKernelContext* ctx, const Tensor& keys,
                            const Tensor& values) override {
    ChangeLock l(this);
    std::fill(keys_.get(), keys_.get() + capacity_, kEmpty);
    size_ = 0;
    has_empty_key_ = false;
    const int64_t n = keys.NumElements();
    if (n == 0) return absl::OkStatus();
    return InsertLocked(ctx, keys.flat<int64_t>().data(), values.flat<float>().data(), n);
  }

 private:
  // The table's exclusive lock. Every change to the table is made under it, so taking it
  // counts as one (generation_); `before()` is the generation the holder found.
  class ChangeLock {
   public:
    explicit ChangeLock(HashTable* table)
        : lock_(table->mu_), before_(table->generation_++) {}
    uint64_t before() const { return before_; }

   private:
    ::tensorflow::mutex_lock lock_;
    const uint64_t before_;
  };

  // Fresh, empty buckets. Rows are left uninitialised: a bucket's row is read only once its
  // key is set, and pages never touched cost no resident memory.
  void Reset(int64_t buckets) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    keys_ = AllocateArray<int64_t>(buckets);
    std::fill(keys_.get(), keys_.get() + buckets, kEmpty);
    rows_ = AllocateArray<float>(buckets * width_);
    capacity_ = buckets;
    size_ = 0;
  }

  // Runs fn over [0, n) in blocks of kBlock ids on the device's CPU worker threads.
  template <typename Fn>
  void ForBlocks(OpKernelContext* ctx, int64_t n, Fn&& fn) const {
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    if (n <= kBlock || workers->num_threads <= 1) {
      fn(int64_t{0}, n);
      return;
    }
    workers->workers->ParallelFor(
        n, ::tsl::thread::ThreadPool::SchedulingParams::Fixed(kBlock),
        [&fn](int64_t begin, int64_t end) { fn(begin, end); });
  }

  const float* RowOf(int64_t slot, const float* dflt) const {
    if (slot >= 0) return rows_.get() + slot * width_;
    if (slot == kEmptyKeySlot) return empty_row_.data();
    return dflt;
  }

  // The bucket of `id`, kMissing if absent, kEmptyKeySlot for the empty marker's own id.
  int64_t Probe(int64_t id) const {
    if (id == kEmpty) return has_empty_key_ ? kEmptyKeySlot : kMissing;
    const int64_t mask = capacity_ - 1;
    for (int64_t s = static_cast<int64_t>(Mix(id)) & mask;; s = (s + 1) & mask) {
      const int64_t k = keys_[s];
      if (k == id) return s;
      if (k == kEmpty) return kMissing;
    }
  }

  // Probe() for ids[begin, end) into slot[], loading the home buckets kAhead ids ahead.
  void Locate(const int64_t* ids, int64_t begin, int64_t end, int64_t* slot) const {
    const int64_t mask = capacity_ - 1;
    const int64_t warm = std::min(end, begin + kAhead);
    for (int64_t i = begin; i < warm; ++i)
      __builtin_prefetch(keys_.get() + (static_cast<int64_t>(Mix(ids[i])) & mask));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t ahead = i + kAhead;
      if (ahead < end)
        __builtin_prefetch(keys_.get() + (static_cast<int64_t>(Mix(ids[ahead])) & mask));
      slot[i - begin] = Probe(ids[i]);
    }
  }

  // Places `id` (absent from the table) in its first empty bucket; returns the bucket.
  int64_t Place(int64_t id) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t mask = capacity_ - 1;
    int64_t s = static_cast<int64_t>(Mix(id)) & mask;
    while (keys_[s] != kEmpty) s = (s + 1) & mask;
    keys_[s] = id;
    ++size_;
    return s;
  }

  // Backward-shift deletion: later entries of the probe run move up into the hole, so no
  // tombstone is left and every run stays contiguous from its home bucket.
  void Erase(int64_t hole) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t mask = capacity_ - 1;
    int64_t j = hole;
    for (;;) {
      j = (j + 1) & mask;
      const int64_t k = keys_[j];
      if (k == kEmpty) break;
      const int64_t home = static_cast<int64_t>(Mix(k)) & mask;
      // Can the entry at j move to the hole? Only if its home is not in (hole, j] cyclically.
      const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
      if (stays) continue;
      keys_[hole] = k;
      std::memcpy(rows_.get() + hole * width_, rows_.get() + j * width_, row_bytes_);
      hole = j;
    }
    keys_[hole] = kEmpty;
    --size_;
  }

  // Doubles the buckets until `rows_needed` rows fit under the load factor. The keys are
  // placed in one pass (loading each key's new home bucket ahead); the rows, the bulk of the
  // bytes, are then copied on the worker threads.
  void Grow(OpKernelContext* ctx, int64_t rows_needed) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t buckets = capacity_;
    while (static_cast<double>(rows_needed) > static_cast<double>(buckets) * max_load_factor_)
      buckets *= 2;
    if (buckets == capacity_) return;
    Array<int64_t> old_keys = std::move(keys_);
    Array<float> old_rows = std::move(rows_);
    const int64_t old_capacity = capacity_;
    const int64_t live = size_;
    Reset(buckets);
    const int64_t mask = capacity_ - 1;
    std::vector<int64_t> from, to;
    from.reserve(live);
    to.reserve(live);
    for (int64_t s = 0; s < old_capacity; ++s)
      if (old_keys[s] != kEmpty) from.push_back(s);
    const int64_t n = static_cast<int64_t>(from.size());
    for (int64_t i = 0; i < n; ++i) {
      if (i + kAhead < n)
        __builtin_prefetch(keys_.get() +
                           (static_cast<int64_t>(Mix(old_keys[from[i + kAhead]])) & mask));
      to.push_back(Place(old_keys[from[i]]));
    }
    ForBlocks(ctx, n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (i + kAhead < end) PrefetchRow(rows_.get() + to[i + kAhead] * width_, width_);
        std::memcpy(rows_.get() + to[i] * width_, old_rows.get() + from[i] * width_,
                    row_bytes_);
      }
    });
  }

  absl::Status InsertLocked(OpKernelContext* ctx, const int64_t* ids, const float* rows,
                            int64_t n) TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return WriteLocked(ctx, ids, n, [rows, this](int64_t i, float* dst, bool) {
      std::memcpy(dst, rows + i * width_, row_bytes_);
    });
  }

  // Writes row i of a batch of `n` ids with write(i, destination, fresh): the id's row, or a
  // new bucket for a new id (fresh: its contents are undefined). Repeated ids: the last write
  // wins; `*created` (if given) counts the ids that were new.
  // `known` (if given): each id's bucket as Locate finds it in the table's current state.
  template <typename Write>
  absl::Status WriteLocked(OpKernelContext* ctx, const int64_t* ids, int64_t n,
                           const Write& write, int64_t* created = nullptr,
                           const int64_t* known = nullptr)
      TF_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // 1. Where each id already is (in parallel: the lock is held exclusively, nothing moves).
    std::vector<int64_t> slot(n);
    if (known != nullptr) {
      std::copy(known, known + n, slot.begin());
    } else {
      ForBlocks(ctx, n, [&](int64_t begin, int64_t end) {
        Locate(ids, begin, end, slot.data() + begin);
      });
    }
    int64_t absent = 0;
    for (int64_t i = 0; i < n; ++i) absent += (slot[i] == kMissing) ? 1 : 0;
    // 2. Grow for the rows that are really new (a batch's repeated new id counts twice here:
    //    an upper bound), then find the slots again if the buckets moved.
    if (absent > 0 && static_cast<double>(size_ + absent) >
                          static_cast<double>(capacity_) * max_load_factor_) {
      Grow(ctx, size_ + absent);
      ForBlocks(ctx, n, [&](int64_t begin, int64_t end) {
        Locate(ids, begin, end, slot.data() + begin);
      });
    }
    // 3. Place the new ids in order. An id repeated in the batch is placed once; its later
    //    rows must then be written after the earlier ones, so such a batch copies in order.
    //    One walk per new id from its home bucket: the id itself (placed earlier in this
    //    batch: a repeat) or the first empty bucket, which it takes; the home buckets of the
    //    next ids are loaded ahead.
    bool repeated = false;
    std::vector<char> fresh(n, 0);
    std::vector<int64_t> todo;
    for (int64_t i = 0; i < n; ++i)
      if (slot[i] == kMissing) todo.push_back(i);
    const int64_t mask = capacity_ - 1;
    const int64_t m = static_cast<int64_t>(todo.size());
    for (int64_t t = 0; t < m; ++t) {
      if (t + kAhead < m) {
        const int64_t next = ids[todo[t + kAhead]];
        __builtin_prefetch(keys_.get() + (static_cast<int64_t>(Mix(next)) & mask));
      }
      const int64_t i = todo[t];
      const int64_t id = ids[i];
      if (id == kEmpty) {
        repeated |= has_empty_key_;  // a second sight of the marker in this batch
        fresh[i] = !has_empty_key_;
        has_empty_key_ = true;
        slot[i] = kEmptyKeySlot;
        continue;
      }
      for (int64_t b = static_cast<int64_t>(Mix(id)) & mask;; b = (b + 1) & mask) {
        const int64_t k = keys_[b];
        if (k == id) {
          repeated = true;
          slot[i] = b;
          break;
        }
        if (k == kEmpty) {
          keys_[b] = id;
          ++size_;
          fresh[i] = 1;
          slot[i] = b;
          break;
        }
      }
    }
    if (created != nullptr) *created = std::count(fresh.begin(), fresh.end(), 1);
    // 4. Write the rows.
    auto copy = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t ahead = i + kAhead;
        if (ahead < end && slot[ahead] >= 0)
          PrefetchRow(rows_.get() + slot[ahead] * width_, width_);
        write(i, slot[i] >= 0 ? rows_.get() + slot[i] * width_ : empty_row_.data(),
              fresh[i] != 0);
      }
    };
    // The empty marker's row is a single buffer: copy it in order too if it appears.
    bool marker = false;
    for (int64_t i = 0; i < n && !marker; ++i) marker = slot[i] == kEmptyKeySlot;
    if (repeated || marker) {
      copy(0, n);
    } else {
      ForBlocks(ctx, n, copy);
    }
    return absl::OkStatus();
  }

  static constexpr int64_t kMissing = -1;
  static constexpr int64_t kEmptyKeySlot = -2;

  mutable ::tensorflow::mutex mu_;
  TensorShape value_shape_;
  int64_t width_ = 0;
  size_t row_bytes_ = 0;  // width_ floats
  float max_load_factor_ = 0.8f;
  int64_t capacity_ TF_GUARDED_BY(mu_) = 0;
  int64_t size_ TF_GUARDED_BY(mu_) = 0;
  Array<int64_t> keys_ TF_GUARDED_BY(mu_);
  Array<float> rows_ TF_GUARDED_BY(mu_);
  bool has_empty_key_ TF_GUARDED_BY(mu_) = false;
  std::vector<float> empty_row_ TF_GUARDED_BY(mu_);
  // How many times the exclusive lock was taken (ChangeLock): FindOrInit's buckets hold while
  // it is unchanged.
  uint64_t generation_ TF_GUARDED_BY(mu_) = 0;
};

REGISTER_OP("VlpsHashTable")
    .Output("table_handle: resource")
    .Attr("container: string = ''")
    .Attr("shared_name: string = ''")
    .Attr("use_node_name_sharing: bool = false")
    .Attr("key_dtype: {int64}")
    .Attr("value_dtype: {float}")
    .Attr("value_shape: shape")
    .Attr("initial_num_buckets: int = 1024")
    .Attr("max_load_factor: float = 0.8")
    .SetIsStateful()
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      // As TensorFlow's own mutable tables: the handle carries the key and value shapes, so
      // LookupTableFindV2 infers [n, width] for its output.
      DataType key_t, value_t;
      ::tensorflow::PartialTensorShape value_p;
      TF_RETURN_IF_ERROR(c->GetAttr("key_dtype", &key_t));
      TF_RETURN_IF_ERROR(c->GetAttr("value_dtype", &value_t));
      TF_RETURN_IF_ERROR(c->GetAttr("value_shape", &value_p));
      ::tensorflow::shape_inference::ShapeHandle value_s;
      TF_RETURN_IF_ERROR(c->MakeShapeFromPartialTensorShape(value_p, &value_s));
      c->set_output_handle_shapes_and_types(
          0, std::vector<::tensorflow::shape_inference::ShapeAndType>{{c->Scalar(), key_t},
                                                                      {value_s, value_t}});
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("VlpsHashTable")
                            .Device(::tensorflow::DEVICE_CPU)
                            .TypeConstraint<int64_t>("key_dtype")
                            .TypeConstraint<float>("value_dtype"),
                        ::tensorflow::LookupTableOp<HashTable, int64_t, float>);

absl::Status GetHashTable(OpKernelContext* ctx, HashTable** out) {
  ::tensorflow::lookup::LookupInterface* table;
  TF_RETURN_IF_ERROR(::tensorflow::lookup::GetResourceLookupTable("table_handle", ctx, &table));
  *out = dynamic_cast<HashTable*>(table);
  if (*out == nullptr) {
    table->Unref();
    return ::tensorflow::errors::InvalidArgument("the table handle is not a VlpsHashTable");
  }
  return absl::OkStatus();
}

// The attributes of a fused optimizer rule (VlpsHashTableApply and ...ApplyInPlace).
struct RuleAttrs {
  HashTable::Rule rule = HashTable::Rule::kSgd;
  float lr = 0;
  float epsilon = 0;
  int64_t dim = 0;

  absl::Status Parse(::tensorflow::OpKernelConstruction* ctx) {
    std::string name;
    TF_RETURN_IF_ERROR(ctx->GetAttr("rule", &name));
    rule = name == "sgd" ? HashTable::Rule::kSgd : HashTable::Rule::kAdagrad;
    TF_RETURN_IF_ERROR(ctx->GetAttr("learning_rate", &lr));
    TF_RETURN_IF_ERROR(ctx->GetAttr("epsilon", &epsilon));
    return ctx->GetAttr("dim", &dim);
  }
};

class HashTableApplyOp : public OpKernel {
 public:
  explicit HashTableApplyOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Parse(ctx));
  }

  void Compute(OpKernelContext* ctx) override {
    HashTable* table;
    OP_REQUIRES_OK(ctx, GetHashTable(ctx, &table));
    ::tensorflow::core::ScopedUnref unref(table);
    OP_REQUIRES_OK(ctx, table->Apply(ctx, ctx->input(1), ctx->input(2), ctx->input(3),
                                     ctx->input(4).scalar<int64_t>()(), attrs_.rule, attrs_.lr,
                                     attrs_.epsilon, attrs_.dim));
  }

 private:
  RuleAttrs attrs_;
};

REGISTER_OP("VlpsHashTableApply")
    .Input("table_handle: resource")
    .Input("keys: int64")
    .Input("rows: float")
    .Input("grads: float")
    .Input("step: int64")
    .Attr("rule: {'sgd', 'adagrad'}")
    .Attr("learning_rate: float")
    .Attr("epsilon: float = 0")
    .Attr("dim: int")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::NoOutputs);

REGISTER_KERNEL_BUILDER(Name("VlpsHashTableApply").Device(::tensorflow::DEVICE_CPU),
                        HashTableApplyOp);

// The initial-row attributes shared by the ops that create rows (see HashTable::InitGroup).
absl::Status ParseInitAttrs(::tensorflow::OpKernelConstruction* ctx, int64_t dim,
                            std::vector<HashTable::InitGroup>* groups,
                            std::vector<float>* slots) {
  std::vector<int64_t> widths, seeds;
  std::vector<std::string> kinds;
  std::vector<float> a, b;
  TF_RETURN_IF_ERROR(ctx->GetAttr("init_widths", &widths));
  TF_RETURN_IF_ERROR(ctx->GetAttr("init_kinds", &kinds));
  TF_RETURN_IF_ERROR(ctx->GetAttr("init_a", &a));
  TF_RETURN_IF_ERROR(ctx->GetAttr("init_b", &b));
  TF_RETURN_IF_ERROR(ctx->GetAttr("init_seeds", &seeds));
  TF_RETURN_IF_ERROR(ctx->GetAttr("slot_values", slots));
  const size_t k = widths.size();
  if (kinds.size() != k || a.size() != k || b.size() != k || seeds.size() != k)
    return ::tensorflow::errors::InvalidArgument(
        ctx->def().op(), ": init_widths, init_kinds, init_a, init_b and init_seeds must have "
        "one entry per column group");
  int64_t total = 0;
  for (size_t i = 0; i < k; ++i) {
    HashTable::InitGroup g;
    if (kinds[i] == "zeros") {
      g.kind = HashTable::InitGroup::kZeros;
    } else if (kinds[i] == "constant") {
      g.kind = HashTable::InitGroup::kConstant;
    } else if (kinds[i] == "uniform") {
      g.kind = HashTable::InitGroup::kUniform;
    } else {
      return ::tensorflow::errors::InvalidArgument(
          ctx->def().op(), ": unknown initializer kind '", kinds[i],
          "' (zeros, constant or uniform)");
    }
    g.width = widths[i];
    g.a = a[i];
    g.b = b[i];
    g.seed_word = static_cast<uint64_t>(seeds[i]) * kGolden;
    total += g.width;
    groups->push_back(g);
  }
  if (total != dim)
    return ::tensorflow::errors::InvalidArgument(
        ctx->def().op(), ": the column groups cover ", total, " columns, the embedding has ",
        dim);
  return absl::OkStatus();
}

// Find with initial rows: the training pull of a shard in one op (see HashTable::FindOrInit).
class HashTableFindOrInitOp : public OpKernel {
 public:
  explicit HashTableFindOrInitOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("whole_rows", &whole_rows_));
    OP_REQUIRES_OK(ctx, ParseInitAttrs(ctx, dim_, &groups_, &slots_));
  }

  void Compute(OpKernelContext* ctx) override {
    HashTable* table;
    OP_REQUIRES_OK(ctx, GetHashTable(ctx, &table));
    ::tensorflow::core::ScopedUnref unref(table);
    const Tensor& keys = ctx->input(1);
    const int64_t width = table->value_shape().dim_size(0);
    OP_REQUIRES(ctx, width == dim_ + static_cast<int64_t>(slots_.size()) + 1,
                ::tensorflow::errors::InvalidArgument(
                    "VlpsHashTableFindOrInit: rows of width ", width, " do not fit dim ", dim_,
                    ", ", slots_.size(), " slot value(s) and a step"));
    const int64_t n = keys.NumElements();
    Tensor* rows;
    Tensor* emb;
    Tensor* missing;
    Tensor* buckets;
    Tensor* generation;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({whole_rows_ ? n : 0, width}),
                                             &rows));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({n, dim_}), &emb));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &missing));
    // The buckets only for the in-place push, which pulls without whole rows.
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({whole_rows_ ? 0 : n}), &buckets));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({}), &generation));
    generation->scalar<int64_t>()() = -1;
    missing->scalar<int32_t>()() = n == 0 ? 0 : static_cast<int32_t>(table->FindOrInit(
        ctx, keys.flat<int64_t>().data(), n, dim_, groups_, slots_,
        whole_rows_ ? rows->flat<float>().data() : nullptr, emb->flat<float>().data(),
        whole_rows_ ? nullptr : buckets->flat<int64_t>().data(),
        whole_rows_ ? nullptr : &generation->scalar<int64_t>()()));
  }

 private:
  int64_t dim_ = 0;
  bool whole_rows_ = true;
  std::vector<HashTable::InitGroup> groups_;
  std::vector<float> slots_;
};

REGISTER_OP("VlpsHashTableFindOrInit")
    .Input("table_handle: resource")
    .Input("keys: int64")
    .Output("rows: float")
    .Output("embeddings: float")
    .Output("missing: int32")
    .Output("buckets: int64")
    .Output("generation: int64")
    .Attr("dim: int")
    .Attr("whole_rows: bool = true")
    .Attr("init_widths: list(int)")
    .Attr("init_kinds: list(string)")
    .Attr("init_a: list(float)")
    .Attr("init_b: list(float)")
    .Attr("init_seeds: list(int)")
    .Attr("slot_values: list(float) >= 0")
    .SetIsStateful()
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      int64_t dim;
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      bool whole;
      TF_RETURN_IF_ERROR(c->GetAttr("whole_rows", &whole));
      std::vector<float> slots;
      TF_RETURN_IF_ERROR(c->GetAttr("slot_values", &slots));
      auto n = c->Dim(c->input(1), 0);
      c->set_output(0, c->Matrix(whole ? n : c->MakeDim(0),
                                 dim + static_cast<int64_t>(slots.size()) + 1));
      c->set_output(1, c->Matrix(n, dim));
      c->set_output(2, c->Scalar());
      c->set_output(3, c->Vector(whole ? c->MakeDim(0) : n));
      c->set_output(4, c->Scalar());
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("VlpsHashTableFindOrInit").Device(::tensorflow::DEVICE_CPU),
                        HashTableFindOrInitOp);

// The push of SGD and Adagrad rows in place, new rows initialised in the kernel (see
// HashTable::ApplyInPlace).
class HashTableApplyInPlaceOp : public OpKernel {
 public:
  explicit HashTableApplyInPlaceOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Parse(ctx));
    OP_REQUIRES_OK(ctx, ParseInitAttrs(ctx, attrs_.dim, &groups_, &slots_));
  }

  void Compute(OpKernelContext* ctx) override {
    HashTable* table;
    OP_REQUIRES_OK(ctx, GetHashTable(ctx, &table));
    ::tensorflow::core::ScopedUnref unref(table);
    int64_t created = 0;
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(ctx->input(5).shape()),
                ::tensorflow::errors::InvalidArgument(
                    "VlpsHashTableApplyInPlace: generation must be a scalar, got ",
                    ctx->input(5).shape().DebugString()));
    OP_REQUIRES_OK(ctx, table->ApplyInPlace(ctx, ctx->input(1), ctx->input(2),
                                            ctx->input(3).scalar<int64_t>()(), attrs_.rule,
                                            attrs_.lr, attrs_.epsilon, attrs_.dim, groups_,
                                            slots_, ctx->input(4),
                                            ctx->input(5).scalar<int64_t>()(), ctx->input(6),
                                            &created));
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<int64_t>()() = created;
  }

 private:
  RuleAttrs attrs_;
  std::vector<HashTable::InitGroup> groups_;
  std::vector<float> slots_;
};

REGISTER_OP("VlpsHashTableApplyInPlace")
    .Input("table_handle: resource")
    .Input("keys: int64")
    .Input("grads: float")
    .Input("step: int64")
    .Input("buckets: int64")
    .Input("generation: int64")
    .Input("pulled: float")
    .Output("created: int64")
    .Attr("rule: {'sgd', 'adagrad'}")
    .Attr("learning_rate: float")
    .Attr("epsilon: float = 0")
    .Attr("dim: int")
    .Attr("init_widths: list(int)")
    .Attr("init_kinds: list(string)")
    .Attr("init_a: list(float)")
    .Attr("init_b: list(float)")
    .Attr("init_seeds: list(int)")
    .Attr("slot_values: list(float) >= 0")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape);

REGISTER_KERNEL_BUILDER(Name("VlpsHashTableApplyInPlace").Device(::tensorflow::DEVICE_CPU),
                        HashTableApplyInPlaceOp);

// The initial rows of ids without a table (the fill of rows looked up before an admission
// check; the same values as FindOrInit writes).
class InitialRowsOp : public OpKernel {
 public:
  explicit InitialRowsOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
    OP_REQUIRES_OK(ctx, ParseInitAttrs(ctx, dim_, &groups_, &slots_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& keys = ctx->input(0);
    const int64_t n = keys.NumElements();
    const int64_t width = dim_ + static_cast<int64_t>(slots_.size()) + 1;
    Tensor* rows;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, width}), &rows));
    const int64_t* ids = keys.flat<int64_t>().data();
    float* out = rows->flat<float>().data();
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(workers->num_threads, workers->workers, n, 50 * width,
                        [&](int64_t begin, int64_t end) {
                          for (int64_t i = begin; i < end; ++i)
                            HashTable::InitialRow(ids[i], groups_, slots_, out + i * width);
                        });
  }

 private:
  int64_t dim_ = 0;
  std::vector<HashTable::InitGroup> groups_;
  std::vector<float> slots_;
};

REGISTER_OP("VlpsInitialRows")
    .Input("keys: int64")
    .Output("rows: float")
    .Attr("dim: int")
    .Attr("init_widths: list(int)")
    .Attr("init_kinds: list(string)")
    .Attr("init_a: list(float)")
    .Attr("init_b: list(float)")
    .Attr("init_seeds: list(int)")
    .Attr("slot_values: list(float) >= 0")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      int64_t dim;
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      std::vector<float> slots;
      TF_RETURN_IF_ERROR(c->GetAttr("slot_values", &slots));
      c->set_output(0, c->Matrix(c->Dim(c->input(0), 0),
                                 dim + static_cast<int64_t>(slots.size()) + 1));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("VlpsInitialRows").Device(::tensorflow::DEVICE_CPU),
                        InitialRowsOp);

class HashTableEvictOp : public OpKernel {
 public:
  explicit HashTableEvictOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    HashTable* table;
    OP_REQUIRES_OK(ctx, GetHashTable(ctx, &table));
    ::tensorflow::core::ScopedUnref unref(table);
    std::vector<int64_t> gone;
    int64_t n_ttl = 0, n_cap = 0;
    table->Evict(ctx->input(1).scalar<int64_t>()(), ctx->input(2).scalar<int64_t>()(),
                 ctx->input(3).scalar<int64_t>()(), &gone, &n_ttl, &n_cap);
    Tensor* keys;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({static_cast<int64_t>(gone.size())}), &keys));
    if (!gone.empty())
      std::memcpy(keys->flat<int64_t>().data(), gone.data(), gone.size() * sizeof(int64_t));
    Tensor* t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &t));
    t->scalar<int64_t>()() = n_ttl;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({}), &t));
    t->scalar<int64_t>()() = n_cap;
  }
};

REGISTER_OP("VlpsHashTableEvict")
    .Input("table_handle: resource")
    .Input("step: int64")
    .Input("ttl: int64")
    .Input("cap: int64")
    .Output("keys: int64")
    .Output("n_ttl: int64")
    .Output("n_cap: int64")
    .SetIsStateful()
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(::tensorflow::shape_inference::InferenceContext::kUnknownDim));
      c->set_output(1, c->Scalar());
      c->set_output(2, c->Scalar());
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("VlpsHashTableEvict").Device(::tensorflow::DEVICE_CPU),
                        HashTableEvictOp);

// The number of buckets of a VlpsHashTable: its memory, which the lookup ops do not expose.
class HashTableBucketsOp : public OpKernel {
 public:
  explicit HashTableBucketsOp(::tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    HashTable* mine;
    OP_REQUIRES_OK(ctx, GetHashTable(ctx, &mine));
    ::tensorflow::core::ScopedUnref unref(mine);
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<int64_t>()() = mine->buckets();
  }
};

REGISTER_OP("VlpsHashTableBuckets")
    .Input("table_handle: resource")
    .Output("buckets: int64")
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape);

REGISTER_KERNEL_BUILDER(Name("VlpsHashTableBuckets").Device(::tensorflow::DEVICE_CPU),
                        HashTableBucketsOp);

}  // namespace vlps
