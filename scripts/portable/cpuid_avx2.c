/* Makes this machine look like an x86-64 CPU with AVX2 and FMA but no AVX-512, AVX-VNNI, AMX or
 * bfloat16, to every library in the process (ONNX Runtime's MLAS, OpenVINO's oneDNN, PyTorch,
 * numpy, the C++ core), so the test suite can be run under the other instruction-set profile the
 * project's machines have (docs/development.md, "Another machine profile").
 *
 * Why a CPUID trap and not environment switches: ONNX Runtime's MLAS picks its kernels from the
 * CPUID instruction at start-up and has no switch to cap them, and OpenVINO decides whether bf16 is
 * available from CPUID too. Linux can make CPUID fault for a thread (arch_prctl ARCH_SET_CPUID, on
 * CPUs with CPUID faulting: the `cpuid_fault` flag in /proc/cpuinfo); the SIGSEGV that follows is
 * answered here with the real result minus the masked feature bits.
 *
 * Use: LD_PRELOAD=libcpuid_avx2.so command. The setting survives fork and clone, and execve loads
 * this library again through LD_PRELOAD. A SIGSEGV handler installed by the program (Python's
 * faulthandler, Ray's) is kept and called for every fault that is not a CPUID.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef __sighandler_t (*signal_fn)(int, __sighandler_t);
typedef int (*sigmask_fn)(int, const sigset_t *, sigset_t *);

static struct sigaction program_handler; /* the program's SIGSEGV handler, called for real faults */
static int active;

static int set_cpuid_enabled(int enabled) { return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static sigaction_fn real_sigaction(void) {
    static sigaction_fn fn;
    if (!fn) fn = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return fn;
}

/* Leaf 7 sub-leaf 0: EBX AVX512F/DQ/IFMA/PF/ER/CD/BW/VL; ECX AVX512_VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ;
 * EDX AVX512_4VNNIW/4FMAPS/VP2INTERSECT, AMX-BF16, AVX512_FP16, AMX-TILE, AMX-INT8.
 * Leaf 7 sub-leaf 1: EAX AVX-VNNI, AVX512_BF16, AMX-FP16, AVX-IFMA. */
static void mask(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    if (leaf == 7 && sub == 0) {
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) |
                (1u << 31));
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        *a &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    /* a faulting CPUID arrives as a general-protection fault (SI_KERNEL); page faults never read ip */
    if (info->si_code == SI_KERNEL && ip && ip[0] == 0x0f && ip[1] == 0xa2) {
        uint32_t leaf = (uint32_t)regs[REG_RAX], sub = (uint32_t)regs[REG_RCX];
        uint32_t a, b, c, d;
        set_cpuid_enabled(1);
        __cpuid_count(leaf, sub, a, b, c, d);
        set_cpuid_enabled(0);
        mask(leaf, sub, &a, &b, &c, &d);
        regs[REG_RAX] = a;
        regs[REG_RBX] = b;
        regs[REG_RCX] = c;
        regs[REG_RDX] = d;
        regs[REG_RIP] += 2;
        return;
    }
    /* a real fault: the program's handler, or the default action (re-raised on return) */
    if (program_handler.sa_flags & SA_SIGINFO && program_handler.sa_sigaction) {
        program_handler.sa_sigaction(sig, info, context);
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(sig);
    } else {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction()(SIGSEGV, &dfl, NULL);
    }
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig != SIGSEGV || !active) return real_sigaction()(sig, act, old);
    if (old) *old = program_handler;
    if (act) program_handler = *act;
    return 0;
}

__sighandler_t signal(int sig, __sighandler_t handler) {
    if (sig != SIGSEGV || !active) {
        static signal_fn real_signal;
        if (!real_signal) real_signal = (signal_fn)dlsym(RTLD_NEXT, "signal");
        return real_signal(sig, handler);
    }
    __sighandler_t previous = program_handler.sa_handler;
    memset(&program_handler, 0, sizeof program_handler);
    program_handler.sa_handler = handler;
    return previous;
}

/* A thread that blocks SIGSEGV would be killed by its first CPUID (the kernel does not queue a
 * blocked synchronous fault), and some thread pools block every signal in their workers. Blocking
 * a synchronous SIGSEGV changes nothing else, so it is left out of every mask. */
static int masked_call(const char *name, int how, const sigset_t *set, sigset_t *old) {
    sigmask_fn real = (sigmask_fn)dlsym(RTLD_NEXT, name);
    if (!active || !set || how == SIG_UNBLOCK) return real(how, set, old);
    sigset_t copy = *set;
    sigdelset(&copy, SIGSEGV);
    return real(how, &copy, old);
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old) { return masked_call("sigprocmask", how, set, old); }

int pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
    return masked_call("pthread_sigmask", how, set, old);
}

__attribute__((constructor)) static void start(void) {
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_sigaction = on_segv;
    /* not SA_ONSTACK: a CPUID runs on a healthy stack, and libraries swap and free alternate
     * stacks behind the handler's back (OpenVINO's CPU plugin does) */
    act.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigemptyset(&act.sa_mask);
    if (real_sigaction()(SIGSEGV, &act, &program_handler) != 0 || set_cpuid_enabled(0) != 0) {
        fprintf(stderr, "cpuid_avx2: this CPU or kernel cannot make CPUID fault (no cpuid_fault flag); "
                        "the instruction set is not restricted\n");
        if (getenv("TEXTCAM_PORTABLE_REQUIRED")) _exit(3);
        return;
    }
    active = 1;
}
