//! `petrel profile`: named servers with their keys, kept in the user's config directory
//! (`$XDG_CONFIG_HOME/petrel/config.toml`, else `~/.config/petrel/config.toml`; mode 0600).
//! `--profile NAME` (or `PETREL_PROFILE`) picks one; `profile use` sets the default.

use anyhow::Context;
use clap::Subcommand;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profiles {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where profiles are kept (`PETREL_CONFIG` overrides it).
pub(crate) fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PETREL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(dir.join("petrel").join("config.toml"))
}

impl Profiles {
    pub(crate) fn load() -> anyhow::Result<Self> {
        let Some(p) = path() else {
            return Ok(Self::default());
        };
        match std::fs::read_to_string(&p) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is not a valid profile file", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("could not read {}", p.display())),
        }
    }

    fn save(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p =
            path().context("no config directory: set HOME, XDG_CONFIG_HOME or PETREL_CONFIG")?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        let tmp = p.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("could not write {}", tmp.display()))?;
        f.write_all(toml::to_string(self)?.as_bytes())?;
        std::fs::rename(&tmp, &p).with_context(|| format!("could not write {}", p.display()))?;
        Ok(p)
    }

    /// The profile named, or the default one; an unknown name is an error.
    pub(crate) fn pick(&self, name: Option<&str>) -> anyhow::Result<Option<Profile>> {
        let Some(name) = name.or(self.default.as_deref()) else {
            return Ok(None);
        };
        match self.profiles.get(name) {
            Some(p) => Ok(Some(p.clone())),
            None => anyhow::bail!(
                "no profile named {name}; add it with `petrel profile set {name} --server URL --token-stdin`, or see `petrel profile ls`"
            ),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Add or change a profile: a server and (from standard input with --token-stdin) its key.
    Set {
        name: String,
        #[arg(long)]
        server: String,
        /// Read the profile's API key from standard input.
        #[arg(long)]
        token_stdin: bool,
    },
    /// The profiles, the default one marked.
    Ls,
    /// Make a profile the default.
    Use { name: String },
    /// Remove a profile.
    Rm { name: String },
}

pub(crate) fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut all = Profiles::load()?;
    match command {
        Command::Set {
            name,
            server,
            token_stdin,
        } => {
            crate::client::Client::new(&server)?;
            let token = if token_stdin {
                let mut t = String::new();
                std::io::stdin().read_to_string(&mut t)?;
                Some(t.trim().to_owned()).filter(|t| !t.is_empty())
            } else {
                all.profiles.get(&name).and_then(|p| p.token.clone())
            };
            all.profiles.insert(name.clone(), Profile { server, token });
            if all.default.is_none() {
                all.default = Some(name.clone());
            }
            let p = all.save()?;
            println!("Saved profile {name} in {}", p.display());
        }
        Command::Ls => {
            println!("  {:<16} {:<40} KEY", "PROFILE", "SERVER");
            for (name, p) in &all.profiles {
                let mark = if all.default.as_deref() == Some(name) {
                    "*"
                } else {
                    " "
                };
                let key = p.token.as_deref().map(|_| "set").unwrap_or("-");
                println!("{mark} {name:<16} {:<40} {key}", p.server);
            }
        }
        Command::Use { name } => {
            all.pick(Some(&name))?;
            all.default = Some(name.clone());
            all.save()?;
            println!("Profile {name} is the default");
        }
        Command::Rm { name } => {
            if all.profiles.remove(&name).is_none() {
                anyhow::bail!("no profile named {name}");
            }
            if all.default.as_deref() == Some(&name) {
                all.default = None;
            }
            all.save()?;
            println!("Removed profile {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
