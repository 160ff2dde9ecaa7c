/* TVM's parallel-launch hooks on top of the OpenMP runtime torch already uses (see threads.py).
 *
 * A TVM host library calls its parallel loops through two pointers that the loader fills in
 * (__TVMBackendParallelLaunch and __TVMBackendParallelBarrier).  threads.py points them at the two
 * functions below, so our kernels' parallel loops run on torch's OpenMP thread team instead of
 * TVM's own thread pool: one pool for the whole process.
 *
 * Nothing here links against an OpenMP runtime.  tvmconv_omp_init receives the addresses of the
 * GOMP/omp entry points as the dynamic linker resolved them for libtorch_cpu.so, so the calls go to
 * the very runtime instance (and thread team) torch's own ops use, never to a second copy.
 * The GOMP_* ABI is libgomp's; LLVM's libomp and Intel's libiomp5 export it too.
 *
 * Compiled once per machine by threads.py with TVM's C++ compiler driver, hence the extern "C".
 */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* From tvm/runtime/c_backend_api.h (TVM 0.27). */
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

/* The OpenMP runtime's entry points, set by tvmconv_omp_init. */
static void (*gomp_parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
static void (*gomp_barrier)(void);
static int (*omp_thread_num)(void);
static int (*omp_num_threads)(void);
/* torch's at::get_num_threads(): torch.set_num_threads' value in any thread (it initialises a new
 * thread's OpenMP setting the way torch's own ops do); NULL: the calling thread's OpenMP default. */
static int (*torch_num_threads)(void);

/* Debug counters for tests: launches made, and the team size the last one ran with. */
long tvmconv_omp_launches = 0;
int tvmconv_omp_last_team = 0;

int tvmconv_omp_init(void* parallel, void* barrier, void* thread_num, void* num_threads,
                     void* torch_threads) {
  if (!parallel || !barrier || !thread_num || !num_threads) return -1;
  gomp_parallel = (void (*)(void (*)(void*), void*, unsigned, unsigned))parallel;
  gomp_barrier = (void (*)(void))barrier;
  omp_thread_num = (int (*)(void))thread_num;
  omp_num_threads = (int (*)(void))num_threads;
  torch_num_threads = (int (*)(void))torch_threads;
  return 0;
}

typedef struct {
  FTVMParallelLambda flambda;
  void* cdata;
  int result; /* first nonzero return of a task, else 0 */
} Job;

/* Runs on every thread of the team: task ids are the thread numbers, and the team's actual size is
 * the task count (the generated lambda splits its loop by penv->num_task itself). */
static void run_task(void* data) {
  Job* job = (Job*)data;
  TVMParallelGroupEnv env;
  env.sync_handle = NULL; /* only TVM's own barrier uses it */
  env.num_task = omp_num_threads();
  int rc = job->flambda(omp_thread_num(), &env, job->cdata);
  if (rc != 0) {
    int expected = 0;
    __atomic_compare_exchange_n(&job->result, &expected, rc, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  }
  if (omp_thread_num() == 0) __atomic_store_n(&tvmconv_omp_last_team, env.num_task, __ATOMIC_RELAXED);
}

/* TVMBackendParallelLaunch: num_task 0 (what TVM's codegen passes) means torch's thread count. */
int tvmconv_omp_parallel_launch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  __atomic_fetch_add(&tvmconv_omp_launches, 1, __ATOMIC_RELAXED);
  int threads = num_task > 0 ? num_task : (torch_num_threads ? torch_num_threads() : 0);
  /* Even one thread goes through GOMP_parallel: a team of one keeps the barrier below local to
   * this launch when the caller itself runs inside an OpenMP region. */
  Job job;
  job.flambda = flambda;
  job.cdata = cdata;
  job.result = 0;
  gomp_parallel(run_task, &job, (unsigned)(threads > 0 ? threads : 0), 0);
  return job.result;
}

/* TVMBackendParallelBarrier: the team's barrier. */
int tvmconv_omp_parallel_barrier(int task_id, TVMParallelGroupEnv* penv) {
  (void)task_id;
  (void)penv;
  gomp_barrier();
  return 0;
}

#ifdef __cplusplus
}
#endif
