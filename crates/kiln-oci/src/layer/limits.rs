//! Bounds on what one layer may write, so that a hostile layer cannot
//! exhaust the host's disk, memory or time.

/// Limits enforced while a layer is extracted (see
/// [`super::apply_layer`]). An entry over one of them is refused before
/// anything is written for it, with [`crate::Error::LimitExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Most bytes of file content the whole layer may write: the data of
    /// regular files, not the holes of sparse ones. `None`: no bound.
    /// Callers set it to the smaller of the disk budget and the layer's
    /// declared uncompressed size, when they know them. Default: `None`.
    pub max_total_bytes: Option<u64>,
    /// Largest size of one file, holes of sparse files included (the size
    /// `ls -l` shows, which is what copies and diffs of it will read).
    /// `None`: no bound. Default: [`ExtractLimits::DEFAULT_MAX_ENTRY_SIZE`].
    pub max_entry_size: Option<u64>,
    /// Most components in an entry's path (`a/b/c` is 3 deep). Default:
    /// [`ExtractLimits::DEFAULT_MAX_DEPTH`].
    pub max_depth: usize,
}

impl ExtractLimits {
    /// 64 GiB: more than any file an image legitimately ships, far less than
    /// a hostile header can claim.
    pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 64 << 30;
    /// 256 components: deeper than real trees (nested `node_modules`
    /// included), and paths stay within `PATH_MAX` (4096 bytes) for the
    /// tools that later use them, at usual name lengths.
    pub const DEFAULT_MAX_DEPTH: usize = 256;
}

impl Default for ExtractLimits {
    fn default() -> Self {
        Self {
            max_total_bytes: None,
            max_entry_size: Some(Self::DEFAULT_MAX_ENTRY_SIZE),
            max_depth: Self::DEFAULT_MAX_DEPTH,
        }
    }
}

/// Which of the [`ExtractLimits`] an entry went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`ExtractLimits::max_total_bytes`].
    TotalBytes,
    /// [`ExtractLimits::max_entry_size`].
    EntrySize,
    /// [`ExtractLimits::max_depth`].
    Depth,
}

impl Limit {
    /// The configuration key (in `[limits]`) that sets this limit.
    pub fn config_key(self) -> &'static str {
        match self {
            Limit::TotalBytes => "layer_max_bytes",
            Limit::EntrySize => "layer_max_entry_size",
            Limit::Depth => "layer_max_depth",
        }
    }

    /// What went over the limit, for messages.
    pub(crate) fn describe(self, actual: u64, max: u64) -> String {
        match self {
            Limit::TotalBytes => {
                format!("it brings the file content written to {actual} bytes, over the layer's limit of {max} bytes")
            }
            Limit::EntrySize => format!("it is {actual} bytes long, over the limit of {max} bytes per file"),
            Limit::Depth => format!("it is {actual} directories deep, over the limit of {max}"),
        }
    }
}
