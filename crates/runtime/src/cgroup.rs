//! Per-instance cgroups: a memory limit of `memory_mb` (past it the kernel kills the instance,
//! and the invocation is answered `function_out_of_memory`) and a pids limit (a fork bomb stays
//! inside its instance). Works on cgroup v1 (separate `memory` and `pids` hierarchies, as on this
//! machine) and on cgroup v2 (one unified hierarchy); off, and saying why, when not asked for
//! (`--instance-limits`) or where Petrel may not create cgroups (not root, no controllers).
//!
//! A process joins its cgroup before it runs any function code: a spawned one writes `0` to the
//! `cgroup.procs` files between fork and exec (`petrel_sandbox::limits`, which gets the files
//! opened here), a forked one does it first thing in the fork server's child, a standby one is
//! moved while it waits for its function.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Tasks (processes and their threads) an instance may have at once.
pub const PIDS_MAX: u32 = 256;

#[derive(Debug, Clone)]
enum Layout {
    /// cgroup v1: the `petrel` group under the memory and under the pids hierarchy, and under
    /// the cpu one when it is mounted.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
    /// cgroup v2: the `petrel` group in the unified hierarchy, memory, pids (and cpu, when
    /// available) enabled below it.
    V2 { root: PathBuf, cpu: bool },
}

/// The node's cgroup setup; `None` inside when cgroups are off.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Option<Layout>,
    status: String,
}

impl Cgroups {
    /// Finds a usable hierarchy and creates Petrel's parent group in it.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(base: &Path) -> Self {
        let off = |why: String| Self {
            layout: None,
            status: format!("cgroups off: {why}"),
        };
        let group = format!("petrel-{}", std::process::id());
        for parent in [
            base.to_path_buf(),
            base.join("memory"),
            base.join("pids"),
            base.join("cpu"),
        ] {
            remove_stale(&parent, &group);
        }
        if base.join("cgroup.controllers").is_file() {
            let controllers =
                std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            if !(controllers.contains("memory") && controllers.contains("pids")) {
                return off(format!(
                    "cgroup v2 without the memory and pids controllers ({})",
                    controllers.trim()
                ));
            }
            let root = base.join(&group);
            let cpu = controllers.split_whitespace().any(|c| c == "cpu");
            let enable = if cpu {
                "+memory +pids +cpu"
            } else {
                "+memory +pids"
            };
            let made = std::fs::create_dir_all(&root).and_then(|_| {
                std::fs::write(base.join("cgroup.subtree_control"), enable)?;
                std::fs::write(root.join("cgroup.subtree_control"), enable)
            });
            return match made {
                Ok(()) => Self {
                    status: format!(
                        "cgroups v2 at {}: memory and pids limits per instance, {}",
                        root.display(),
                        cpu_status(cpu)
                    ),
                    layout: Some(Layout::V2 { root, cpu }),
                },
                Err(e) => off(format!(
                    "cannot create {} ({e}); run Petrel as root for limits",
                    root.display()
                )),
            };
        }
        let (memory, pids) = (
            base.join("memory").join(&group),
            base.join("pids").join(&group),
        );
        if !base.join("memory").is_dir() || !base.join("pids").is_dir() {
            return off(format!(
                "no cgroup v2 and no v1 memory and pids hierarchies under {}",
                base.display()
            ));
        }
        let cpu = base
            .join("cpu")
            .join("cpu.shares")
            .is_file()
            .then(|| base.join("cpu").join(&group))
            .filter(|c| std::fs::create_dir_all(c).is_ok());
        match std::fs::create_dir_all(&memory).and_then(|_| std::fs::create_dir_all(&pids)) {
            Ok(()) => Self {
                status: format!(
                    "cgroups v1 at {} and {}: memory and pids limits per instance, {}",
                    memory.display(),
                    pids.display(),
                    cpu_status(cpu.is_some())
                ),
                layout: Some(Layout::V1 { memory, pids, cpu }),
            },
            Err(e) => off(format!(
                "cannot create {} ({e}); run Petrel as root for limits",
                memory.display()
            )),
        }
    }

    /// Off, for tests and configurations that want no limits.
    pub fn off(why: &str) -> Self {
        Self {
            layout: None,
            status: format!("cgroups off: {why}"),
        }
    }

    /// What is on, in one line, for the start-up log.
    pub fn status(&self) -> &str {
        &self.status
    }

    pub fn enabled(&self) -> bool {
        self.layout.is_some()
    }

    /// Removes this server's parent groups (at shutdown, once its instances are gone).
    pub fn remove(&self) {
        let dirs = match &self.layout {
            Some(Layout::V1 { memory, pids, cpu }) => [memory, pids]
                .into_iter()
                .chain(cpu.as_ref())
                .cloned()
                .collect(),
            Some(Layout::V2 { root, .. }) => vec![root.clone()],
            None => return,
        };
        for d in dirs {
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }

    /// Creates the cgroup of one instance with its limits; `None` when cgroups are off.
    pub fn create(
        &self,
        instance: &str,
        memory_mb: u32,
    ) -> std::io::Result<Option<InstanceCgroup>> {
        let Some(layout) = &self.layout else {
            return Ok(None);
        };
        let bytes = (memory_mb as u64 * 1024 * 1024).to_string();
        let dirs = match layout {
            Layout::V1 { memory, pids, cpu } => {
                let (m, p) = (memory.join(instance), pids.join(instance));
                std::fs::create_dir_all(&m)?;
                std::fs::create_dir_all(&p)?;
                std::fs::write(m.join("memory.limit_in_bytes"), &bytes)?;
                // Without swap accounting this file is absent; with it, swap counts too.
                let _ = std::fs::write(m.join("memory.memsw.limit_in_bytes"), &bytes);
                std::fs::write(p.join("pids.max"), PIDS_MAX.to_string())?;
                let mut dirs = vec![m, p];
                if let Some(cpu) = cpu {
                    let c = cpu.join(instance);
                    std::fs::create_dir_all(&c)?;
                    std::fs::write(c.join("cpu.shares"), cpu_shares_v1(memory_mb).to_string())?;
                    dirs.push(c);
                }
                dirs
            }
            Layout::V2 { root, cpu } => {
                let d = root.join(instance);
                std::fs::create_dir(&d)?;
                std::fs::write(d.join("memory.max"), &bytes)?;
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                std::fs::write(d.join("pids.max"), PIDS_MAX.to_string())?;
                if *cpu {
                    std::fs::write(d.join("cpu.weight"), cpu_weight_v2(memory_mb).to_string())?;
                }
                vec![d]
            }
        };
        let v2 = matches!(layout, Layout::V2 { .. });
        Ok(Some(InstanceCgroup { dirs, v2 }))
    }
}

/// CPU in proportion to memory, as on Lambda: an instance of 1 GiB gets the weight of any other
/// process on the node (cgroup v1's default 1,024 shares), one of 128 MiB an eighth of it.
/// A share, not a cap: CPU nobody else wants is used.
pub fn cpu_shares_v1(memory_mb: u32) -> u32 {
    memory_mb.clamp(2, 262_144)
}

/// The same on cgroup v2, whose default weight is 100 (1 to 10,000).
pub fn cpu_weight_v2(memory_mb: u32) -> u32 {
    (memory_mb * 100 / 1024).clamp(1, 10_000)
}

fn cpu_status(on: bool) -> &'static str {
    if on {
        "CPU weight in proportion to memory_mb"
    } else {
        "no cpu controller (no CPU weight)"
    }
}

/// Removes the empty groups earlier Petrel servers left under `parent` (a group that still holds a
/// process cannot be removed, and stays).
fn remove_stale(parent: &Path, ours: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name.strip_prefix("petrel-") else {
            continue;
        };
        // Another Petrel server that still runs keeps its groups, empty or not.
        let running = pid
            .parse::<u32>()
            .is_ok_and(|p| Path::new("/proc").join(p.to_string()).exists());
        if name == ours || running || !e.path().is_dir() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(e.path()) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

/// One instance's cgroup (one directory per hierarchy). Removed on drop once empty.
#[derive(Debug)]
pub struct InstanceCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl InstanceCgroup {
    /// The `cgroup.procs` files a process writes `0` to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Open `cgroup.procs` files for a child to join between fork and exec.
    pub fn open_procs(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.procs_files()
            .iter()
            .map(|p| File::options().write(true).open(p).map(OwnedFd::from))
            .collect()
    }

    /// Sets the limits for an instance of `memory_mb` (a standby process's group becoming its
    /// instance's): memory (and swap with it, where accounted) and CPU weight. Fails when the
    /// group already holds more memory than the new limit allows.
    pub fn set_limits(&self, memory_mb: u32) -> std::io::Result<()> {
        let bytes = (memory_mb as u64 * 1024 * 1024).to_string();
        for d in &self.dirs {
            if self.v2 {
                std::fs::write(d.join("memory.max"), &bytes)?;
                if d.join("cpu.weight").exists() {
                    std::fs::write(d.join("cpu.weight"), cpu_weight_v2(memory_mb).to_string())?;
                }
                continue;
            }
            if d.join("memory.limit_in_bytes").exists() {
                // memsw may never be below the memory limit: raise it first, settle it after.
                let memsw = d.join("memory.memsw.limit_in_bytes");
                let _ = std::fs::write(&memsw, &bytes);
                std::fs::write(d.join("memory.limit_in_bytes"), &bytes)?;
                let _ = std::fs::write(&memsw, &bytes);
            }
            if d.join("cpu.shares").exists() {
                std::fs::write(d.join("cpu.shares"), cpu_shares_v1(memory_mb).to_string())?;
            }
        }
        Ok(())
    }

    /// Renames the group (a standby's, after the instance it becomes), in every hierarchy.
    pub fn rename(&mut self, name: &str) -> std::io::Result<()> {
        for d in &mut self.dirs {
            let to = d.with_file_name(name);
            std::fs::rename(&*d, &to)?;
            *d = to;
        }
        Ok(())
    }

    /// Moves a running process (a standby that waits for its function) in.
    pub fn adopt(&self, pid: i32) -> std::io::Result<()> {
        for p in self.procs_files() {
            File::options()
                .write(true)
                .open(p)?
                .write_all(pid.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// Whether the kernel killed a process here for passing the memory limit.
    pub fn oom_killed(&self) -> bool {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.dirs.iter().any(|d| {
            std::fs::read_to_string(d.join(file))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("oom_kill "))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .is_some_and(|n| n > 0)
        })
    }
}

impl Drop for InstanceCgroup {
    fn drop(&mut self) {
        // The instance's processes were killed just before; the kernel may need a moment to let
        // go of them. Retry off the caller's thread.
        let dirs = std::mem::take(&mut self.dirs);
        let remove = move || {
            for attempt in 0..50 {
                let left: Vec<_> = dirs
                    .iter()
                    .filter(|d| std::fs::remove_dir(d).is_err() && d.exists())
                    .collect();
                if left.is_empty() {
                    return;
                }
                if attempt == 49 {
                    tracing::warn!(cgroups = ?left, "could not remove an instance's cgroup");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let _ = std::thread::Builder::new()
            .name("petrel-cgroup-rm".into())
            .spawn(remove);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_without_controllers_turns_cgroups_off_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cgroups::detect_at(dir.path());
        assert!(!c.enabled());
        assert!(
            c.status().contains("no cgroup v2 and no v1"),
            "{}",
            c.status()
        );
        assert!(c.create("i-1", 128).unwrap().is_none());
    }

    #[test]
    fn v1_and_v2_layouts_get_their_limits_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("memory")).unwrap();
        std::fs::create_dir_all(dir.path().join("pids")).unwrap();
        std::fs::create_dir_all(dir.path().join("cpu")).unwrap();
        std::fs::write(dir.path().join("cpu/cpu.shares"), "1024").unwrap();
        let c = Cgroups::detect_at(dir.path());
        assert!(c.enabled(), "{}", c.status());
        assert!(c.status().contains("CPU weight"), "{}", c.status());
        let g = c.create("i-1", 128).unwrap().unwrap();
        let group = format!("petrel-{}", std::process::id());
        let mem = dir.path().join("memory").join(&group).join("i-1");
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            (128u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pids").join(&group).join("i-1/pids.max"))
                .unwrap(),
            PIDS_MAX.to_string()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpu").join(&group).join("i-1/cpu.shares"))
                .unwrap(),
            "128",
            "an eighth of a 1 GiB instance's share"
        );
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert!(g.oom_killed());

        let dir2 = tempfile::tempdir().unwrap();
        std::fs::write(
            dir2.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        let c2 = Cgroups::detect_at(dir2.path());
        assert!(c2.enabled(), "{}", c2.status());
        let g2 = c2.create("i-2", 64).unwrap().unwrap();
        let d = dir2.path().join(&group).join("i-2");
        assert_eq!(
            std::fs::read_to_string(d.join("memory.max")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(std::fs::read_to_string(d.join("cpu.weight")).unwrap(), "6");
        assert_eq!((cpu_weight_v2(1024), cpu_weight_v2(10_240)), (100, 1000));
        assert!(!g2.oom_killed());
        std::fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(g2.oom_killed());
    }
}
