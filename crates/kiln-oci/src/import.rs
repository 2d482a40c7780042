//! Images from disk: OCI image layouts (a directory), OCI archives (a tar of
//! a layout) and docker-archives (`docker save`). Every blob is verified
//! against its digest while it is copied into the blob store.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use kiln_store::{BlobStore, Digest};
use oci_spec::image::{Descriptor, ImageManifest};
use serde::Deserialize;

use crate::error::{Error, Failure, Fault, Result, blob_failure};
use crate::image::{
    MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, Manifest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR,
    OCI_LAYER_ZSTD, OCI_MANIFEST, ResolvedImage, assemble, parse_manifest, select_platform, to_digest,
};
use crate::layer::Compression;
use crate::platform::Platform;
use crate::reference::Reference;

/// Annotation naming a manifest in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd adds with the full image name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Somewhere files of an image can be read from by name.
trait Source {
    /// Opens `name` (relative, `/`-separated); `None` if it does not exist.
    fn open(&self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>>;
}

/// An OCI layout directory.
struct Dir(PathBuf);

impl Source for Dir {
    fn open(&self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        match File::open(self.0.join(name)) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Imports the image tagged `tag` (or the only one) from the OCI layout
/// `dir` into `store`. `tag` matches the `org.opencontainers.image.ref.name`
/// (or containerd's image name) annotation of an `index.json` entry; nested
/// indexes are followed, choosing `platform`.
pub fn import_oci_layout(
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
    store: &BlobStore,
) -> Result<ResolvedImage> {
    let wrap = |f: Fault| match f {
        Fault::Failure(failure) => Error::Import {
            what: "OCI layout".into(),
            path: dir.to_path_buf(),
            failure: Box::new(failure),
        },
        Fault::Fatal(e) => e,
    };
    if !dir.join("index.json").is_file() {
        return Err(wrap(
            Failure::Invalid("no index.json: not an OCI image layout".into()).into(),
        ));
    }
    import_layout_from(
        &Dir(dir.to_path_buf()),
        &dir.display().to_string(),
        tag,
        platform,
        store,
    )
    .map_err(wrap)
}

/// Imports an image from the tar archive at `path`: an OCI archive (a tar
/// of an OCI layout, recognised by `index.json`) or a docker-archive
/// (`manifest.json` with `RepoTags`). `tag` chooses among several images:
/// a ref name for OCI archives, a repo tag (`busybox:latest`) for
/// docker-archives. Docker-archive layers are stored as they are
/// (uncompressed tars, checked against the config's diff ids) under an
/// OCI manifest synthesised for them.
pub fn import_archive(path: &Path, tag: Option<&str>, platform: &Platform, store: &BlobStore) -> Result<ResolvedImage> {
    let wrap = |what: &str| {
        let what = what.to_string();
        move |f: Fault| match f {
            Fault::Failure(failure) => Error::Import {
                what,
                path: path.to_path_buf(),
                failure: Box::new(failure),
            },
            Fault::Fatal(e) => e,
        }
    };
    let index = TarIndex::build(path).map_err(wrap("archive"))?;
    let source = path.display().to_string();
    if index.has("index.json") {
        import_layout_from(&index, &source, tag, platform, store).map_err(wrap("OCI archive"))
    } else if index.has("manifest.json") {
        import_docker_archive(&index, &source, tag, store).map_err(wrap("docker-archive"))
    } else {
        Err(wrap("archive")(
            Failure::Invalid("neither index.json (OCI archive) nor manifest.json (docker-archive) in it".into()).into(),
        ))
    }
}

fn read_small(src: &dyn Source, name: &str, max: u64) -> Result<Vec<u8>, Fault> {
    let mut r = src
        .open(name)
        .map_err(|e| Failure::Other(format!("read {name}: {e}")))?
        .ok_or_else(|| Failure::Invalid(format!("{name} is missing")))?;
    let mut out = Vec::new();
    r.by_ref()
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| Failure::Other(format!("read {name}: {e}")))?;
    if out.len() as u64 > max {
        return Err(Failure::Invalid(format!("{name} is larger than the {max} bytes accepted")).into());
    }
    Ok(out)
}

/// Copies `reader` into the store, checking size and (if given) digest.
fn store_reader(
    store: &BlobStore,
    mut reader: impl Read,
    expected: Option<(&Digest, u64)>,
    what: &str,
) -> Result<(Digest, u64), Fault> {
    let mut w = store.writer().map_err(Error::store(format!("store {what}")))?;
    let n = io::copy(&mut reader, &mut w).map_err(|e| Failure::Other(format!("read {what}: {e}")))?;
    if let Some((digest, size)) = expected
        && n != size
    {
        return Err(Failure::SizeMismatch {
            digest: digest.to_string(),
            expected: size,
            actual: n,
        }
        .into());
    }
    match w.commit(expected.map(|(d, _)| d)) {
        Ok(d) => Ok((d, n)),
        Err(e) => match blob_failure(e) {
            Ok(f) => Err(f.into()),
            Err(e) => Err(Error::store(format!("store {what}"))(e).into()),
        },
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Copies the blob `d` of a layout into the store unless it is there.
fn copy_blob(src: &dyn Source, store: &BlobStore, d: &Digest, size: u64) -> Result<(), Fault> {
    if store.contains(d) {
        return Ok(());
    }
    let name = blob_name(d);
    let reader = src
        .open(&name)
        .map_err(|e| Failure::Other(format!("read {name}: {e}")))?
        .ok_or_else(|| Failure::BlobUnknown(format!("{d} ({name} is missing)")))?;
    store_reader(store, reader, Some((d, size)), &name)?;
    Ok(())
}

fn names_of(d: &Descriptor) -> Vec<&str> {
    let Some(a) = d.annotations() else {
        return Vec::new();
    };
    [REF_NAME, CONTAINERD_NAME]
        .iter()
        .filter_map(|k| a.get(*k).map(String::as_str))
        .collect()
}

/// Whether the name `name` of a layout entry is what `tag` asks for.
fn name_matches(name: &str, tag: &str) -> bool {
    if name == tag {
        return true;
    }
    // Full references compare normalised (busybox:latest = docker.io/library/busybox:latest).
    let full = |s: &str| s.contains(':') || s.contains('/');
    if !full(name) {
        return false;
    }
    let Ok(a) = Reference::parse(name) else {
        return false;
    };
    if Reference::parse(tag).is_ok_and(|b| a.name() == b.name() && a.tag() == b.tag()) {
        return true;
    }
    // A bare tag matches the tag of a full name.
    !full(tag) && a.tag() == Some(tag)
}

/// The full reference a layout entry names, if any.
fn reference_of(d: &Descriptor) -> Option<Reference> {
    names_of(d)
        .into_iter()
        .filter(|n| n.contains('/') || n.contains(':'))
        .find_map(|n| Reference::parse(n).ok())
}

fn import_layout_from(
    src: &dyn Source,
    source: &str,
    tag: Option<&str>,
    platform: &Platform,
    store: &BlobStore,
) -> Result<ResolvedImage, Fault> {
    let index = match parse_manifest(&read_small(src, "index.json", MAX_MANIFEST_BYTES)?)? {
        Manifest::Index(i) => i,
        Manifest::Image(_) => {
            return Err(Failure::Invalid("index.json is a manifest, not an index".into()).into());
        }
    };
    let entries = index.manifests();
    let available = || {
        let names: Vec<String> = entries
            .iter()
            .map(|d| {
                names_of(d)
                    .first()
                    .map_or_else(|| format!("unnamed {}", d.digest()), |n| n.to_string())
            })
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let chosen: &Descriptor = match tag {
        Some(tag) => entries
            .iter()
            .find(|d| names_of(d).iter().any(|n| name_matches(n, tag)))
            .ok_or_else(|| Failure::TagNotFound {
                tag: tag.to_string(),
                available: available(),
            })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(Failure::Ambiguous {
                count: entries.len(),
                available: available(),
            }
            .into());
        }
    };
    let reference = reference_of(chosen);

    let mut desc = chosen.clone();
    let mut index_digest = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let digest = to_digest(desc.digest())?;
        if desc.size() > MAX_MANIFEST_BYTES {
            return Err(
                Failure::Invalid(format!("manifest {digest} is larger than {MAX_MANIFEST_BYTES} bytes")).into(),
            );
        }
        copy_blob(src, store, &digest, desc.size())?;
        let bytes = store.read(&digest).map_err(Error::store("read manifest"))?;
        match parse_manifest(&bytes)? {
            Manifest::Index(inner) => {
                index_digest.get_or_insert(digest);
                desc = select_platform(&inner, platform)?.clone();
            }
            Manifest::Image(manifest) => {
                if let Some(p) = desc.platform()
                    && !platform.matches(&Platform::from_oci(p))
                {
                    return Err(Failure::NoMatchingPlatform {
                        wanted: platform.to_string(),
                        available: Platform::from_oci(p).to_string(),
                    }
                    .into());
                }
                let config_digest = to_digest(manifest.config().digest())?;
                if manifest.config().size() > MAX_CONFIG_BYTES {
                    return Err(Failure::Invalid(format!("config is larger than {MAX_CONFIG_BYTES} bytes")).into());
                }
                copy_blob(src, store, &config_digest, manifest.config().size())?;
                for layer in manifest.layers() {
                    copy_blob(src, store, &to_digest(layer.digest())?, layer.size())?;
                }
                let config = store.read(&config_digest).map_err(Error::store("read config"))?;
                return Ok(assemble(
                    reference,
                    source.to_string(),
                    index_digest,
                    digest,
                    *manifest,
                    &config,
                )?);
            }
        }
    }
    Err(Failure::Unsupported(format!("image indexes nested more than {MAX_INDEX_DEPTH} deep")).into())
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Deserialize)]
struct DockerImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn import_docker_archive(
    src: &TarIndex,
    source: &str,
    tag: Option<&str>,
    store: &BlobStore,
) -> Result<ResolvedImage, Fault> {
    let images: Vec<DockerImage> = serde_json::from_slice(&read_small(src, "manifest.json", MAX_MANIFEST_BYTES)?)
        .map_err(|e| Failure::Invalid(format!("malformed manifest.json: {e}")))?;
    let tags_of = |i: &DockerImage| i.repo_tags.clone().unwrap_or_default();
    let available = || {
        let all: Vec<String> = images.iter().flat_map(tags_of).collect();
        if all.is_empty() {
            format!("{} untagged", images.len())
        } else {
            all.join(", ")
        }
    };
    let (image, matched_tag) = match tag {
        Some(tag) => images
            .iter()
            .find_map(|i| {
                tags_of(i)
                    .into_iter()
                    .find(|t| name_matches(t, tag))
                    .map(|t| (i, Some(t)))
            })
            .ok_or_else(|| Failure::TagNotFound {
                tag: tag.to_string(),
                available: available(),
            })?,
        None if images.len() == 1 => (&images[0], tags_of(&images[0]).into_iter().next()),
        None => {
            return Err(Failure::Ambiguous {
                count: images.len(),
                available: available(),
            }
            .into());
        }
    };
    let reference = matched_tag.and_then(|t| Reference::parse(&t).ok());

    let config = read_small(src, &image.config, MAX_CONFIG_BYTES)?;
    let config_digest = store.put(&config).map_err(Error::store("store config"))?;
    let parsed: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config)
        .map_err(|e| Failure::Invalid(format!("malformed config {}: {e}", image.config)))?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != image.layers.len() {
        return Err(Failure::Invalid(format!(
            "config lists {} diff_ids for {} layers in manifest.json",
            diff_ids.len(),
            image.layers.len()
        ))
        .into());
    }

    let mut layers = Vec::new();
    for (name, diff_id) in image.layers.iter().zip(diff_ids) {
        let reader = src
            .open(name)
            .map_err(|e| Failure::Other(format!("read {name}: {e}")))?
            .ok_or_else(|| Failure::Invalid(format!("layer {name} named in manifest.json is missing")))?;
        let mut reader = BufReader::new(reader);
        let prefix = reader
            .fill_buf()
            .map_err(|e| Failure::Other(format!("read {name}: {e}")))?;
        let compression = Compression::sniff(prefix).unwrap_or(Compression::None);
        let (digest, size) = store_reader(store, reader, None, name)?;
        if compression == Compression::None && digest.to_string() != *diff_id {
            return Err(Failure::DigestMismatch {
                expected: diff_id.clone(),
                actual: digest.to_string(),
            }
            .into());
        }
        let media_type = match compression {
            Compression::None => OCI_LAYER_TAR,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        };
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
    }
    let manifest_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest_json).expect("serialising JSON cannot fail");
    let manifest_digest = store.put(&bytes).map_err(Error::store("store synthesised manifest"))?;
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| Failure::Invalid(format!("synthesised manifest: {e}")))?;
    Ok(assemble(
        reference,
        source.to_string(),
        None,
        manifest_digest,
        manifest,
        &config,
    )?)
}

/// Where each file of a tar archive is, so that files can be read in any
/// order without unpacking. Symlinks and hardlinks inside the archive (as
/// `docker save` writes for shared layers) are followed, within it.
struct TarIndex {
    path: PathBuf,
    items: HashMap<String, Item>,
}

enum Item {
    File { offset: u64, size: u64 },
    Link(String),
}

/// `a/./b/../c` → `a/c`; `None` if it climbs out of the archive.
fn clean(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

impl TarIndex {
    fn build(path: &Path) -> Result<Self, Fault> {
        let io_fail = |e: io::Error| Failure::Other(format!("read: {e}"));
        let mut file = File::open(path).map_err(Error::io("open archive", path))?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(io_fail)?;
        if Compression::sniff(&magic[..n]).is_some() {
            return Err(
                Failure::Unsupported("compressed archive; decompress it first (gunzip / unzstd)".into()).into(),
            );
        }
        file.seek(SeekFrom::Start(0)).map_err(io_fail)?;
        let mut archive = tar::Archive::new(file);
        let mut items = HashMap::new();
        for entry in archive.entries_with_seek().map_err(io_fail)? {
            let entry = entry.map_err(|e| Failure::Invalid(format!("not a readable tar: {e}")))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean(&raw) else { continue };
            let item = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Item::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let joined = if entry.header().entry_type() == tar::EntryType::Link || target.starts_with('/') {
                        target
                    } else {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        format!("{dir}/{target}")
                    };
                    let Some(t) = clean(&joined) else { continue };
                    Item::Link(t)
                }
                _ => continue,
            };
            items.insert(name, item);
        }
        Ok(Self {
            path: path.to_path_buf(),
            items,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = clean(name)?;
        for _ in 0..16 {
            match self.items.get(&name)? {
                Item::File { offset, size } => return Some((*offset, *size)),
                Item::Link(t) => name = t.clone(),
            }
        }
        None
    }
}

impl Source for TarIndex {
    fn open(&self, name: &str) -> io::Result<Option<Box<dyn Read + '_>>> {
        let Some((offset, size)) = self.locate(name) else {
            return Ok(None);
        };
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Some(Box::new(BufReader::new(f).take(size))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_tags() {
        assert!(name_matches("latest", "latest"));
        assert!(name_matches("docker.io/library/busybox:latest", "busybox:latest"));
        assert!(name_matches("docker.io/library/busybox:latest", "busybox"));
        assert!(name_matches("docker.io/library/busybox:latest", "latest"));
        assert!(name_matches("busybox:latest", "docker.io/library/busybox"));
        assert!(!name_matches("busybox:1", "busybox:2"));
        assert!(!name_matches("latest", "v1"));
    }

    #[test]
    fn clean_paths_stay_inside() {
        assert_eq!(clean("./a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(clean("/a").as_deref(), Some("a"));
        assert_eq!(clean("../x"), None);
    }
}
