//! SentencePiece's `ModelProto` (`sentencepiece_model.proto`, proto2), hand-written for `prost`: the `tokenizer`
//! blob of an SBS file and the `tokenizer.model` file of Gemma checkpoints. Decodes and encodes.
//!
//! Every field of the upstream schema is declared (in tag order, as protobuf serializes them) and optional fields
//! keep their presence, so that decoding and re-encoding a model written by SentencePiece gives the same bytes.
//! Defaults in the comments are the schema's, returned by the generated getters.

/// The whole tokenizer model.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// The vocabulary; a piece's id is its index.
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<SentencePiece>,
    #[prost(message, optional, tag = "2")]
    pub trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    pub normalizer_spec: Option<NormalizerSpec>,
    #[prost(message, optional, tag = "4")]
    pub self_test_data: Option<SelfTestData>,
    #[prost(message, optional, tag = "5")]
    pub denormalizer_spec: Option<NormalizerSpec>,
}

/// One vocabulary entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SentencePiece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// Default `Normal`.
    #[prost(enumeration = "PieceType", optional, tag = "3", default = "Normal")]
    pub r#type: Option<i32>,
}

/// `SentencePiece.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// `TrainerSpec.ModelType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ModelType {
    Unigram = 1,
    Bpe = 2,
    Word = 3,
    Char = 4,
}

/// How the model was trained; the tokenizer reads the model type, special ids and pieces, and byte fallback.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrainerSpec {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, optional, tag = "2")]
    pub model_prefix: Option<String>,
    /// Default `Unigram`.
    #[prost(enumeration = "ModelType", optional, tag = "3", default = "Unigram")]
    pub model_type: Option<i32>,
    /// Default 8000.
    #[prost(int32, optional, tag = "4", default = "8000")]
    pub vocab_size: Option<i32>,
    #[prost(string, repeated, tag = "5")]
    pub accept_language: Vec<String>,
    #[prost(int32, optional, tag = "6", default = "0")]
    pub self_test_sample_size: Option<i32>,
    #[prost(string, optional, tag = "7")]
    pub input_format: Option<String>,
    /// Default 0.9995.
    #[prost(float, optional, tag = "10", default = "0.9995")]
    pub character_coverage: Option<f32>,
    #[prost(uint64, optional, tag = "11", default = "0")]
    pub input_sentence_size: Option<u64>,
    #[prost(int32, optional, tag = "12", default = "0")]
    pub mining_sentence_size: Option<i32>,
    #[prost(int32, optional, tag = "13", default = "0")]
    pub training_sentence_size: Option<i32>,
    #[prost(int32, optional, tag = "14", default = "1000000")]
    pub seed_sentencepiece_size: Option<i32>,
    #[prost(float, optional, tag = "15", default = "0.75")]
    pub shrinking_factor: Option<f32>,
    #[prost(int32, optional, tag = "16", default = "16")]
    pub num_threads: Option<i32>,
    #[prost(int32, optional, tag = "17", default = "2")]
    pub num_sub_iterations: Option<i32>,
    #[prost(int32, optional, tag = "18", default = "4192")]
    pub max_sentence_length: Option<i32>,
    #[prost(bool, optional, tag = "19", default = "true")]
    pub shuffle_input_sentence: Option<bool>,
    #[prost(int32, optional, tag = "20", default = "16")]
    pub max_sentencepiece_length: Option<i32>,
    #[prost(bool, optional, tag = "21", default = "true")]
    pub split_by_unicode_script: Option<bool>,
    #[prost(bool, optional, tag = "22", default = "true")]
    pub split_by_whitespace: Option<bool>,
    #[prost(bool, optional, tag = "23", default = "true")]
    pub split_by_number: Option<bool>,
    #[prost(bool, optional, tag = "24", default = "false")]
    pub treat_whitespace_as_suffix: Option<bool>,
    #[prost(bool, optional, tag = "25", default = "false")]
    pub split_digits: Option<bool>,
    #[prost(bool, optional, tag = "26", default = "false")]
    pub allow_whitespace_only_pieces: Option<bool>,
    #[prost(string, repeated, tag = "30")]
    pub control_symbols: Vec<String>,
    #[prost(string, repeated, tag = "31")]
    pub user_defined_symbols: Vec<String>,
    #[prost(bool, optional, tag = "32", default = "true")]
    pub vocabulary_output_piece_score: Option<bool>,
    #[prost(bool, optional, tag = "33", default = "true")]
    pub hard_vocab_limit: Option<bool>,
    #[prost(bool, optional, tag = "34", default = "false")]
    pub use_all_vocab: Option<bool>,
    /// Unknown bytes become their `<0xXX>` pieces instead of `<unk>`.
    #[prost(bool, optional, tag = "35", default = "false")]
    pub byte_fallback: Option<bool>,
    #[prost(string, optional, tag = "36")]
    pub required_chars: Option<String>,
    #[prost(int32, optional, tag = "40", default = "0")]
    pub unk_id: Option<i32>,
    #[prost(int32, optional, tag = "41", default = "1")]
    pub bos_id: Option<i32>,
    #[prost(int32, optional, tag = "42", default = "2")]
    pub eos_id: Option<i32>,
    #[prost(int32, optional, tag = "43", default = "-1")]
    pub pad_id: Option<i32>,
    #[prost(string, optional, tag = "44")]
    pub unk_surface: Option<String>,
    #[prost(string, optional, tag = "45")]
    pub unk_piece: Option<String>,
    #[prost(string, optional, tag = "46")]
    pub bos_piece: Option<String>,
    #[prost(string, optional, tag = "47")]
    pub eos_piece: Option<String>,
    #[prost(string, optional, tag = "48")]
    pub pad_piece: Option<String>,
    #[prost(bool, optional, tag = "49", default = "false")]
    pub train_extremely_large_corpus: Option<bool>,
    #[prost(bool, optional, tag = "50", default = "false")]
    pub enable_differential_privacy: Option<bool>,
    #[prost(float, optional, tag = "51", default = "0")]
    pub differential_privacy_noise_level: Option<f32>,
    #[prost(uint64, optional, tag = "52", default = "0")]
    pub differential_privacy_clipping_threshold: Option<u64>,
    #[prost(string, optional, tag = "53")]
    pub pretokenization_delimiter: Option<String>,
    #[prost(string, optional, tag = "54")]
    pub seed_sentencepieces_file: Option<String>,
}

/// Text normalization before tokenizing (and, as `denormalizer_spec`, after decoding).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NormalizerSpec {
    /// Rule name, e.g. `identity` or `nmt_nfkc`.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// The compiled normalization rules (a double-array trie and its strings); empty for `identity`.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub precompiled_charsmap: Option<Vec<u8>>,
    /// Prepend `▁` to the input. Default true.
    #[prost(bool, optional, tag = "3", default = "true")]
    pub add_dummy_prefix: Option<bool>,
    /// Default true.
    #[prost(bool, optional, tag = "4", default = "true")]
    pub remove_extra_whitespaces: Option<bool>,
    /// Replace spaces by `▁`. Default true.
    #[prost(bool, optional, tag = "5", default = "true")]
    pub escape_whitespaces: Option<bool>,
    #[prost(string, optional, tag = "6")]
    pub normalization_rule_tsv: Option<String>,
}

/// Sentences and their expected segmentation, checked by SentencePiece's trainer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SelfTestData {
    #[prost(message, repeated, tag = "1")]
    pub samples: Vec<SelfTestSample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SelfTestSample {
    #[prost(string, optional, tag = "1")]
    pub input: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub expected: Option<String>,
}

impl ModelProto {
    /// Parses a serialized model.
    pub fn decode_bytes(bytes: &[u8]) -> Result<ModelProto, prost::DecodeError> {
        <ModelProto as prost::Message>::decode(bytes)
    }

    /// Serializes the model.
    pub fn encode_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}
