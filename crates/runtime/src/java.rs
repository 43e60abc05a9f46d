//! The `java` runtime's files: the official AWS Lambda runtime interface client and its
//! dependencies (from Maven Central, or the local Maven repository), Petrel's launcher
//! (`runtimes/java/PetrelJava.java`, compiled here), the client's JNI library unpacked once, and
//! a class data sharing archive of all of them. Made once per data directory, on the first
//! deploy of a java function, keyed by what goes into it.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const POM: &str = include_str!("../../../runtimes/java/pom.xml");
const LAUNCHER: &str = include_str!("../../../runtimes/java/PetrelJava.java");
/// The runtime client's main class, which the plain start runs.
pub(crate) const CLIENT_MAIN: &str = "com.amazonaws.services.lambda.runtime.api.client.AWSLambda";
const JNI_PROPERTY: &str =
    "com.amazonaws.services.lambda.runtime.api.client.runtimeapi.NativeClient.JNI";

/// The prepared runtime.
#[derive(Debug)]
pub(crate) struct JavaFiles {
    /// `petrel-java.jar` and the client's jars, as the JVM's class path.
    pub classpath: String,
    /// The class data sharing archive, when the JVM could write one.
    pub archive: Option<PathBuf>,
    pub jni: Option<PathBuf>,
}

impl JavaFiles {
    /// The JVM's options for an instance of `memory_mb`: a heap of 85% of it (the rest is the
    /// JVM's own), the serial collector, C1 only (the fastest start; `JAVA_TOOL_OPTIONS` can ask
    /// for more), and what the launcher needs to hand an instance its environment.
    pub fn jvm_args(&self, memory_mb: u32) -> Vec<String> {
        let mut a = vec![
            format!("-Xmx{}m", (memory_mb as u64 * 85 / 100).max(16)),
            "-Xss512k".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-XX:-UsePerfData".into(),
            "-Xshare:auto".into(),
            "--add-opens=java.base/java.lang=ALL-UNNAMED".into(),
            "--add-opens=java.base/java.util=ALL-UNNAMED".into(),
        ];
        if let Some(jsa) = &self.archive {
            a.push(format!("-XX:SharedArchiveFile={}", jsa.display()));
        }
        if let Some(jni) = &self.jni {
            a.push(format!("-D{JNI_PROPERTY}={}", jni.display()));
        }
        a.push("-cp".into());
        a.push(self.classpath.clone());
        a
    }
}

/// The runtime, prepared on first use.
#[derive(Debug)]
pub(crate) struct JavaRuntime {
    dir: PathBuf,
    files: tokio::sync::OnceCell<Result<Arc<JavaFiles>, String>>,
}

impl JavaRuntime {
    /// The runtime's directory under `cache` (which the sandbox shows, read-only).
    pub fn new(cache: &Path) -> Self {
        let mut h = Sha256::new();
        h.update(POM);
        h.update(LAUNCHER);
        h.update(std::env::consts::ARCH);
        let key = hex::encode(&h.finalize()[..8]);
        let dir = cache.join(format!("java-{key}"));
        // Prepared by an earlier start: ready now.
        let files = tokio::sync::OnceCell::new_with(read_prepared(&dir).map(|f| Ok(Arc::new(f))));
        Self { dir, files }
    }

    /// The prepared files, made now if this node has none (Maven, javac: seconds, once).
    pub async fn files(&self) -> Result<Arc<JavaFiles>, String> {
        self.files
            .get_or_init(|| async {
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || prepare(&dir).map(Arc::new))
                    .await
                    .unwrap_or_else(|e| Err(format!("preparing the java runtime panicked: {e}")))
            })
            .await
            .clone()
    }

    /// The files if they are ready already (a standby JVM is only made then).
    pub fn ready(&self) -> Option<Arc<JavaFiles>> {
        self.files.get().and_then(|r| r.as_ref().ok().cloned())
    }
}

fn prepare(dir: &Path) -> Result<JavaFiles, String> {
    if let Some(f) = read_prepared(dir) {
        return Ok(f);
    }
    for (tool, what) in [
        ("java", "run"),
        ("javac", "compile Petrel's launcher for"),
        ("jar", "package"),
    ] {
        if which(tool).is_none() {
            return Err(format!(
                "runtime java needs a JDK 17 or newer on the node's PATH ({tool}, to {what} java functions, is not there); install one (Debian: apt-get install openjdk-17-jdk-headless)"
            ));
        }
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("src")).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let io =
        |e: std::io::Error| format!("could not write the java runtime in {}: {e}", tmp.display());
    std::fs::write(tmp.join("pom.xml"), POM).map_err(io)?;
    std::fs::write(tmp.join("src/PetrelJava.java"), LAUNCHER).map_err(io)?;

    // The runtime client's jars: from the local Maven repository if they are there, else from
    // Maven Central.
    if which("mvn").is_none() {
        return Err(format!(
            "runtime java needs Maven (mvn) once per node, to fetch the AWS Lambda runtime interface client from Maven Central; install it (Debian: apt-get install maven), or put the client's jars in {}/lib",
            dir.display()
        ));
    }
    let copy = |offline: bool| {
        let mut c = Command::new("mvn");
        c.args(["-q", "-B"]);
        if offline {
            c.arg("-o");
        }
        c.args([
            "dependency:copy-dependencies",
            "-DoutputDirectory=lib",
            "-DincludeScope=runtime",
        ])
        .current_dir(&tmp);
        run(c)
    };
    if copy(true).is_err() {
        copy(false).map_err(|e| {
            format!("could not fetch the AWS Lambda runtime interface client with Maven (is Maven Central reachable?): {e}")
        })?;
    }
    let mut jars: Vec<PathBuf> = std::fs::read_dir(tmp.join("lib"))
        .map_err(|e| format!("Maven left no lib/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jar"))
        .collect();
    jars.sort();
    let client = jars
        .iter()
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with("aws-lambda-java-runtime-interface-client")
            })
        })
        .cloned()
        .ok_or("Maven fetched no aws-lambda-java-runtime-interface-client jar")?;

    let mut c = Command::new("javac");
    c.args(["--release", "17", "-d", "classes", "src/PetrelJava.java"])
        .current_dir(&tmp);
    run(c).map_err(|e| format!("could not compile Petrel's java launcher: {e}"))?;
    let mut c = Command::new("jar");
    c.args(["cf", "petrel-java.jar", "-C", "classes", "."])
        .current_dir(&tmp);
    run(c).map_err(|e| format!("could not package Petrel's java launcher: {e}"))?;

    // The JNI library, unpacked once rather than by every JVM into its /tmp.
    let arch = match std::env::consts::ARCH {
        "aarch64" => "aarch_64",
        other => other,
    };
    let lib = format!("jni/libaws-lambda-jni.linux-{arch}.so");
    let mut c = Command::new("jar");
    c.arg("xf").arg(&client).arg(&lib).current_dir(&tmp);
    let jni = run(c)
        .ok()
        .map(|_| dir.join(&lib))
        .filter(|_| tmp.join(&lib).is_file());

    // Paths as they will be once renamed into place.
    let classpath = std::iter::once(dir.join("petrel-java.jar"))
        .chain(jars.iter().map(|j| {
            dir.join("lib")
                .join(j.file_name().expect("a jar has a name"))
        }))
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // The archive records the class path it was made with, so it is made after the rename.
    std::fs::write(tmp.join("classpath"), &classpath).map_err(io)?;
    if let Some(j) = &jni {
        std::fs::write(tmp.join("jni-path"), j.display().to_string()).map_err(io)?;
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => {}
        // Another server on this data directory made it first: use that one.
        Err(_) if dir.join("classpath").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            return Err(format!(
                "could not move the java runtime into {}: {e}",
                dir.display()
            ))
        }
    }
    make_archive(dir);
    read_prepared(dir).ok_or_else(|| format!("the java runtime in {} is incomplete", dir.display()))
}

/// The class data sharing archive of the launcher and the client: a JVM that loads them all
/// and exits writes it. Without one, JVMs start about 200 ms slower.
fn make_archive(dir: &Path) {
    let jsa = dir.join("petrel.jsa");
    if jsa.is_file() {
        return;
    }
    let Ok(classpath) = std::fs::read_to_string(dir.join("classpath")) else {
        return;
    };
    let tmp = dir.join(format!("petrel.jsa.tmp{}", std::process::id()));
    let files = JavaFiles {
        classpath,
        archive: None,
        jni: None,
    };
    let mut c = Command::new("java");
    c.arg(format!("-XX:ArchiveClassesAtExit={}", tmp.display()))
        .args(files.jvm_args(ARCHIVE_MEMORY_MB))
        .args(["PetrelJava", "--archive"]);
    match run(c) {
        Ok(_) if tmp.is_file() => {
            let _ = std::fs::rename(&tmp, &jsa);
        }
        r => {
            tracing::warn!(result = ?r.err(), "the JVM wrote no class data sharing archive; java instances start without one");
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The heap the archive is made with (archives do not depend on it).
const ARCHIVE_MEMORY_MB: u32 = 128;

fn read_prepared(dir: &Path) -> Option<JavaFiles> {
    let classpath = std::fs::read_to_string(dir.join("classpath")).ok()?;
    let archive = Some(dir.join("petrel.jsa")).filter(|p| p.is_file());
    let jni = std::fs::read_to_string(dir.join("jni-path"))
        .ok()
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    Some(JavaFiles {
        classpath,
        archive,
        jni,
    })
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs `c`, its output kept for the error.
fn run(mut c: Command) -> Result<(), String> {
    let out = c
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{:?} could not start: {e}", c.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        Err(format!(
            "{:?} failed ({}): {}",
            c.get_program(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}
