//! Process-level helpers: the file-descriptor limit, CPU pinning, the
//! wall clock carried in messages; and, from the test kit, TCP connections
//! from a chosen 127.0.0.x source address (so 50 000 connections do not
//! run out of ephemeral ports on one address pair).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Microseconds since the Unix epoch (one machine, one clock).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process has used so far.
pub fn process_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }
}

/// Raises `RLIMIT_NOFILE` as far as allowed: to `fs.nr_open` (up to
/// 1 048 576) when privileged, else to the hard limit. Returns the new soft
/// limit. A server started by the tool inherits it.
pub fn raise_nofile() -> u64 {
    let want: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        let hard = r.rlim_max;
        r.rlim_cur = want;
        r.rlim_max = want.max(hard);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            r.rlim_cur = hard;
            r.rlim_max = hard;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

/// Pins the calling process (all threads created afterwards) to `cpus`.
pub fn pin_self(cpus: &[usize]) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How many CPUs this process may run on.
pub fn allowed_cpus() -> usize {
    // SAFETY: as in pin_self.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        (libc::CPU_COUNT(&set) as usize).max(1)
    }
}

/// Parses a CPU list such as `1` or `0,1`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|c| c.trim().parse().with_context(|| format!("cpu {c:?}")))
        .collect()
}

pub use ladder_testkit::net::{src_ip, tcp_connect};
