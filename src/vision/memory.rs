//! Will the model fit? What loading it will hold, estimated from the files and settings,
//! against what the machine has free, or the cgroup it runs in (systemd's `MemoryMax=`, a
//! container's limit) allows: checked before llama.cpp allocates anything, so a board that
//! is too small gets a message naming the levers instead of an OOM kill halfway through
//! loading.

use std::path::{Path, PathBuf};

const MB: u64 = 1_000_000;

/// What a loaded engine holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The weights: text model and projector as large as their files, region heads twice
    /// their F16 file (they compute in F32).
    pub weights: u64,
    /// The KV cache: context x layers x (K + V) width x the cache type's size.
    pub kv: u64,
    /// Compute buffers, logits and the process itself.
    pub work: u64,
}

impl Estimate {
    /// From what is loaded and how, and the text model's shape.
    pub fn new(load: &Load, shape: &TextShape) -> Self {
        let Load {
            file_bytes,
            n_ctx,
            kv_bytes_per_value,
            n_batch,
            flash_attention,
        } = *load;
        let TextShape {
            n_layer,
            n_embd,
            n_head,
        } = *shape;
        let kv =
            (f64::from(n_ctx) * f64::from(n_layer) * 2.0 * f64::from(n_embd) * kv_bytes_per_value)
                as u64;
        // Fitted to peak RSS on the full shape (BENCHMARKS.md, "Every shipped
        // configuration": 130, 181 and 201 MB above the weights and the cache at batches
        // of 128, 512 and 730): about 110 MB for the encoder's graph, the process and its
        // libraries, 131 KB of activations a batch position, and without flash attention
        // the attention scores of a whole batch (the region heads' 730-position prefix:
        // 136 MB; computed, not measured).
        let b = u64::from(n_batch);
        let mut work = 110 * MB + b * 64 * u64::from(n_embd);
        if !flash_attention {
            work += 2 * b * b * u64::from(n_head) * 4;
        }
        Self {
            weights: file_bytes,
            kv,
            work,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.work
    }
}

/// What is loaded, and how.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// The files' bytes as held in memory.
    pub file_bytes: u64,
    pub n_ctx: u32,
    /// 2 for an F16 cache, 4 for F32, 34/32 for Q8_0.
    pub kv_bytes_per_value: f64,
    pub n_batch: u32,
    pub flash_attention: bool,
}

/// The text model's shape, from its GGUF header.
#[derive(Debug, Clone, Copy)]
pub struct TextShape {
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
}

/// How much memory a new allocation can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    /// Where the figure comes from, for the message.
    pub from: String,
}

/// The smallest of the machine's `MemAvailable` and the headroom under every memory limit
/// of this process's cgroup and its parents (v1 or v2), read under `root` (`/` in use).
/// Page cache the cgroup could drop (its inactive file pages) counts as free. None when
/// nothing can be read.
pub fn budget(root: &Path) -> Option<Budget> {
    let mut best: Option<Budget> = None;
    let mut consider = |bytes: u64, from: String| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Budget { bytes, from });
        }
    };
    if let Some(kb) = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .and_then(|m| field(&m, "MemAvailable:"))
    {
        consider(
            kb * 1024,
            "the machine's available memory (MemAvailable)".into(),
        );
    }
    for dir in cgroup_dirs(root) {
        if let Some((headroom, limit, file)) = headroom(&dir) {
            consider(
                headroom,
                format!(
                    "the cgroup limit {} MB in {}",
                    limit / MB,
                    dir.join(file).display()
                ),
            );
        }
    }
    best
}

/// Refuses an estimate larger than the budget, naming the levers.
pub fn check(need: &Estimate, budget: &Budget) -> Result<(), String> {
    if need.total() <= budget.bytes {
        return Ok(());
    }
    Err(format!(
        "the model needs about {} MB (weights {} MB, KV cache {} MB, compute {} MB) but only {} MB is free under {}; \
         use smaller files (model.download.quantize = \"q4_0\" and quantize_mmproj = true: the Raspberry Pi 5 configuration), \
         a smaller model.context_size, model.kv_cache_type = \"q8_0\", or a smaller model.batch_size",
        need.total() / MB,
        need.weights / MB,
        need.kv / MB,
        need.work / MB,
        budget.bytes / MB,
        budget.from
    ))
}

/// The first number after `key` in a `key value` listing (meminfo, memory.stat).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The memory cgroup directories of this process, innermost first, up to each hierarchy's
/// mount point: from /proc/self/cgroup and where /proc/self/mountinfo mounts them.
fn cgroup_dirs(root: &Path) -> Vec<PathBuf> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
    let (groups, mounts) = (read("proc/self/cgroup"), read("proc/self/mountinfo"));
    let mut dirs = Vec::new();
    for line in groups.lines() {
        // "4:memory:/path" (v1) or "0::/path" (v2).
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "memory") {
            continue;
        }
        // mountinfo: id parent dev ROOT MOUNTPOINT options - FSTYPE source SUPER_OPTIONS
        for m in mounts.lines() {
            let (left, right) = match m.split_once(" - ") {
                Some(x) => x,
                None => continue,
            };
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if f.len() < 5 || r.len() < 3 {
                continue;
            }
            let matches = if v2 {
                r[0] == "cgroup2"
            } else {
                r[0] == "cgroup" && r[2].split(',').any(|o| o == "memory")
            };
            if !matches {
                continue;
            }
            let Ok(rel) = Path::new(path).strip_prefix(f[3]) else {
                continue;
            };
            let mount = root.join(f[4].trim_start_matches('/'));
            let mut dir = mount.join(rel);
            loop {
                dirs.push(dir.clone());
                if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
                    break;
                }
            }
        }
    }
    dirs
}

/// (headroom, limit, limit file) of one cgroup directory with a memory limit.
fn headroom(dir: &Path) -> Option<(u64, u64, &'static str)> {
    let num = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let (limit, usage, inactive, file) = if dir.join("memory.max").is_file() {
        (
            num("memory.max")?,
            num("memory.current")?,
            field(&stat, "inactive_file ").unwrap_or(0),
            "memory.max",
        )
    } else {
        (
            num("memory.limit_in_bytes")?,
            num("memory.usage_in_bytes")?,
            field(&stat, "total_inactive_file ").unwrap_or(0),
            "memory.limit_in_bytes",
        )
    };
    // v1 says "no limit" with a number near 2^63.
    if limit >= 1 << 60 {
        return None;
    }
    Some((
        limit.saturating_sub(usage.saturating_sub(inactive)),
        limit,
        file,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const MEMINFO: &str = "MemTotal:       24683772 kB\nMemAvailable:    8000000 kB\n";

    #[test]
    fn a_v2_service_limit_is_the_budget_less_what_it_uses() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "proc/meminfo", MEMINFO);
        write(
            r,
            "proc/self/cgroup",
            "0::/system.slice/moonwatch.service\n",
        );
        write(
            r,
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let svc = "sys/fs/cgroup/system.slice/moonwatch.service";
        write(r, &format!("{svc}/memory.max"), "1700000000\n");
        write(r, &format!("{svc}/memory.current"), "300000000\n");
        // 100 MB of it is page cache the kernel can drop.
        write(
            r,
            &format!("{svc}/memory.stat"),
            "anon 200000000\nfile 100000000\ninactive_file 100000000\n",
        );
        write(r, "sys/fs/cgroup/system.slice/memory.max", "max\n");
        write(
            r,
            "sys/fs/cgroup/system.slice/memory.current",
            "5000000000\n",
        );
        let b = budget(r).unwrap();
        assert_eq!(b.bytes, 1_500_000_000, "{b:?}");
        assert!(b.from.contains("1700 MB"), "{b:?}");
        assert!(b.from.contains("moonwatch.service/memory.max"), "{b:?}");
    }

    #[test]
    fn a_v1_limit_counts_from_where_the_hierarchy_is_mounted() {
        // As in a container: the mount's root is the container's own group.
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "proc/meminfo", MEMINFO);
        write(r, "proc/self/cgroup", "5:cpu:/\n4:memory:/box/pi\n0::/\n");
        write(
            r,
            "proc/self/mountinfo",
            "35 31 0:32 /box /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/pi/memory.limit_in_bytes",
            "1800000000\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/pi/memory.usage_in_bytes",
            "100000000\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/memory.usage_in_bytes",
            "9000000000\n",
        );
        let b = budget(r).unwrap();
        assert_eq!(b.bytes, 1_700_000_000, "{b:?}");
    }

    #[test]
    fn without_a_limit_the_machine_decides() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "proc/meminfo", MEMINFO);
        let b = budget(d.path()).unwrap();
        assert_eq!(b.bytes, 8_000_000 * 1024);
        assert!(budget(&d.path().join("nothing")).is_none());
    }

    #[test]
    fn the_check_names_the_figures_and_the_levers() {
        // The Pi 5 configuration's shape: 2048 wide, 24 layers, n_ctx 1024, KV q8_0.
        let load = Load {
            file_bytes: 1_300 * MB,
            n_ctx: 1024,
            kv_bytes_per_value: 34.0 / 32.0,
            n_batch: 128,
            flash_attention: true,
        };
        let shape = TextShape {
            n_layer: 24,
            n_embd: 2048,
            n_head: 32,
        };
        let e = Estimate::new(&load, &shape);
        assert_eq!(e.kv, 106_954_752);
        let fits = Budget {
            bytes: 1_700 * MB,
            from: "test".into(),
        };
        assert!(check(&e, &fits).is_ok());
        let small = Budget {
            bytes: 1_000 * MB,
            from: "the cgroup limit 1000 MB".into(),
        };
        let msg = check(&e, &small).unwrap_err();
        assert!(
            msg.contains("only 1000 MB is free under the cgroup limit"),
            "{msg}"
        );
        assert!(msg.contains("KV cache 106 MB"), "{msg}");
        assert!(msg.contains("q4_0"), "{msg}");
    }
}
