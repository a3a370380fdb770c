//! gemma.cpp's tensor element types (`compression/types.h`), with the ids stored in SBS files.

use super::fields::FieldEnum;

/// A tensor's element type. The discriminant is the id stored in the `toc` and `config` blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum SbsType {
    #[default]
    Unknown = 0,
    F32 = 1,
    BF16 = 2,
    /// Switching floating point: 8-bit sign-magnitude, largest magnitude 1.875.
    SFP = 3,
    /// Non-uniform quantization: per 256 values, 16 SFP cluster centres and 4-bit indices.
    NUQ = 4,
    F64 = 5,
    U32 = 6,
    U64 = 7,
    /// 8-bit integers in groups of 128 with a bf16 scale and zero point.
    I8 = 8,
}

/// Values per NUQ group (one table of cluster centres each).
pub const NUQ_GROUP_SIZE: u64 = 256;
/// Cluster centres per NUQ group.
pub const NUQ_CLUSTERS: u64 = 16;
/// Values per I8 group (one bf16 scale and one bf16 zero point each).
pub const I8_GROUP_SIZE: u64 = 128;

impl SbsType {
    /// Every type, in id order.
    pub const ALL: [SbsType; 9] = [
        SbsType::Unknown,
        SbsType::F32,
        SbsType::BF16,
        SbsType::SFP,
        SbsType::NUQ,
        SbsType::F64,
        SbsType::U32,
        SbsType::U64,
        SbsType::I8,
    ];

    /// The stored id.
    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn from_id(id: u32) -> Option<SbsType> {
        Self::ALL.get(id as usize).copied()
    }

    /// gemma.cpp's name, used in model specifiers such as `gemma3-270m-sfp-it`.
    pub fn name(self) -> &'static str {
        match self {
            SbsType::Unknown => "unknown",
            SbsType::F32 => "f32",
            SbsType::BF16 => "bf16",
            SbsType::SFP => "sfp",
            SbsType::NUQ => "nuq",
            SbsType::F64 => "f64",
            SbsType::U32 => "u32",
            SbsType::U64 => "u64",
            SbsType::I8 => "i8",
        }
    }

    pub fn from_name(name: &str) -> Option<SbsType> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// gemma.cpp's `TypeBits`: bits per value (NUQ counts 4 though its tables make it about 4.5).
    pub fn bits(self) -> u32 {
        match self {
            SbsType::Unknown => 0,
            SbsType::F32 | SbsType::U32 => 32,
            SbsType::BF16 => 16,
            SbsType::SFP | SbsType::I8 => 8,
            SbsType::NUQ => 4,
            SbsType::F64 | SbsType::U64 => 64,
        }
    }

    /// Bytes per stored element (`MatPtr::element_bytes`): `ceil(bits / 8)`, so 1 for NUQ.
    pub fn element_bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }

    /// gemma.cpp's `ComputeNumElements`: stored elements for `values` values, including NUQ's cluster tables and
    /// I8's scales and zero points. `None` on overflow.
    pub fn num_elements(self, values: u64) -> Option<u64> {
        match self {
            SbsType::NUQ => {
                let groups = values.div_ceil(NUQ_GROUP_SIZE);
                groups.checked_mul(NUQ_CLUSTERS)?.checked_add(values.div_ceil(2))
            }
            SbsType::I8 => {
                let groups = values.div_ceil(I8_GROUP_SIZE);
                groups.checked_mul(4)?.checked_add(values)
            }
            _ => Some(values),
        }
    }
}

impl FieldEnum for SbsType {
    const ENUM_NAME: &'static str = "Type";
    fn to_u32(self) -> u32 {
        self.id()
    }
    fn from_u32(value: u32) -> Option<Self> {
        Self::from_id(value)
    }
}

crate::sbs_field_impl!(enum SbsType);
