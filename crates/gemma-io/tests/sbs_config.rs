//! gemma.cpp's `gemma/configs_test.cc` for every known model, the model table's facts, the tensor layouts, and the
//! `TensorRecord` (MatPtr) wire format.

use gemma_io::sbs::config::{LayerAttentionType, PostNormType, QueryScaleType};
use gemma_io::sbs::fields::{read_fields, write_fields};
use gemma_io::sbs::tensor_info::{exported_tensors, tensor_slots, TensorInfoRegistry};
use gemma_io::sbs::{Model, ModelConfig, PromptWrapping, SbsType, TensorRecord};

#[test]
fn every_known_model_round_trips_and_is_recognised() {
    let models: Vec<Model> = Model::known().collect();
    assert_eq!(models.len(), 12);
    for model in models {
        let mut config = ModelConfig::new(model, SbsType::SFP, model.choose_wrapping(None));
        assert_eq!(config.model, model);
        let name = config.display_name.clone();
        // The model and its name can be deduced from all other fields.
        config.model = Model::Unknown;
        config.display_name.clear();
        assert!(config.overwrite_with_canonical(), "{name}");
        assert_eq!(config.model, model);
        assert_eq!(config.display_name, name);

        let words = write_fields(&config).unwrap();
        let mut back = ModelConfig::default();
        let r = read_fields(&mut back, &words, 0).unwrap();
        assert_eq!((r.pos, r.extra_u32, r.missing_fields), (words.len(), 0, 0), "{name}");
        assert!(back.test_equal(&config), "{name}");
        assert_eq!(back, config, "{name}");

        let spec = config.specifier().unwrap();
        let parsed = ModelConfig::from_specifier(&spec).unwrap();
        assert_eq!(parsed, config, "{spec}");
    }
}

/// `use_global_timescale`, the field gemma.cpp appended last (October 2025): its table sets it for Gemma 3
/// 1B and up only; a config written before it reads as `None` (one missing field), not as `false`.
#[test]
fn global_timescale_field_is_read_written_and_told_apart_when_absent() {
    for model in Model::known() {
        let c = ModelConfig::canonical(model).unwrap();
        let big_gemma3 = matches!(model, Model::Gemma3_1B | Model::Gemma3_4B | Model::Gemma3_12B | Model::Gemma3_27B);
        assert_eq!(c.use_global_timescale, Some(big_gemma3), "{model:?}");
    }
    let mut c = ModelConfig::new(Model::Gemma3_270M, SbsType::SFP, PromptWrapping::GemmaIt);
    c.use_global_timescale = Some(true);
    let words = write_fields(&c).unwrap();
    // The flag is the last word; without it (and with the struct's leading length one less) the data is a
    // config from before the field.
    assert_eq!((words.last(), words[0] as usize), (Some(&1), words.len() - 1));
    let mut old_words = words[..words.len() - 1].to_vec();
    old_words[0] -= 1;
    let mut old = ModelConfig::default();
    let r = read_fields(&mut old, &old_words, 0).unwrap();
    assert_eq!((r.missing_fields, old.use_global_timescale), (1, None));
    let mut back = ModelConfig::default();
    read_fields(&mut back, &words, 0).unwrap();
    assert_eq!(back.use_global_timescale, Some(true));
    assert_eq!(back, c);
}

#[test]
fn model_table_facts() {
    let c = ModelConfig::canonical(Model::Gemma3_270M).unwrap();
    assert_eq!((c.model_dim, c.num_layers, c.vocab_size, c.max_seq_len), (640, 18, 262_144, 32_768));
    let l = &c.layer_configs[0];
    assert_eq!((l.ff_hidden_dim, l.heads, l.kv_heads, l.qkv_dim), (2048, 4, 1, 256));
    assert!(l.use_qk_norm && l.optimized_gating);
    assert_eq!(l.post_norm, PostNormType::Scale);
    assert_eq!(c.wrapping, PromptWrapping::GemmaIt);
    assert_eq!((c.eos_id, c.secondary_eos_id), (1, 106));
    // Sliding window pattern: five local layers of 512, then a global one.
    assert_eq!(&c.attention_window_sizes[..7], &[512, 512, 512, 512, 512, 32768, 512]);
    assert!(c.is_global_layer(5) && c.is_global_layer(11) && c.is_global_layer(17) && !c.is_global_layer(0));
    assert_eq!(
        ModelConfig::new(Model::Gemma3_270M, SbsType::SFP, PromptWrapping::GemmaIt).specifier().unwrap(),
        "gemma3-270m-sfp-it"
    );

    let g2 = ModelConfig::canonical(Model::Gemma2_27B).unwrap();
    assert_eq!(g2.query_scale, QueryScaleType::SqrtModelDimDivNumHeads);
    assert_eq!((g2.att_cap, g2.final_cap), (50.0, 30.0));
    assert_eq!(&g2.attention_window_sizes[..2], &[4096, 8192]);

    let pg = ModelConfig::canonical(Model::PaliGemma2_3B_448).unwrap();
    assert_eq!(pg.vocab_size, 257_152);
    assert_eq!(pg.vit_config.seq_len, 32 * 32);
    assert_eq!(pg.vit_config.layer_configs.len(), 27);
    assert_eq!(pg.vit_config.layer_configs[0].attention_type, LayerAttentionType::Vit);
    assert!(!pg.layer_configs[0].optimized_gating);

    let g3 = ModelConfig::canonical(Model::Gemma3_4B).unwrap();
    assert_eq!((g3.vit_config.seq_len, g3.vit_config.pool_dim, g3.vocab_size), (4096, 4, 262_144));
    assert!(g3.layer_configs[0].optimized_gating);

    // Model ids as stored, and gemma.cpp's deduction from layer counts.
    assert_eq!(Model::Gemma3_270M as u32, 18);
    assert_eq!(Model::Gemma2_2B as u32, 7);
    assert_eq!(Model::deduce(18, false, false), Model::Gemma3_270M);
    assert_eq!(Model::deduce(42, true, true), Model::PaliGemma2_10B_448);
    assert_eq!(Model::deduce(19, false, false), Model::Unknown);
}

#[test]
fn tensor_layouts_of_gemma3_270m() {
    let c = ModelConfig::new(Model::Gemma3_270M, SbsType::SFP, PromptWrapping::GemmaIt);
    let reg = TensorInfoRegistry::new(&c);
    assert_eq!(reg.extents("c_embedding"), (262_144, 640));
    assert_eq!(reg.extents("c_final_norm"), (1, 640));
    // Q rows (4 heads x 256) then K and V of the single KV head.
    assert_eq!(reg.extents("qkv_ein_0"), ((4 + 2) * 256, 640));
    assert_eq!(reg.extents("qkv2_w_3"), (2 * 256, 640));
    assert_eq!(reg.extents("att_ein_17"), (4 * 640, 256));
    assert_eq!(reg.extents("att_w_1"), (640, 4 * 256));
    assert_eq!(reg.extents("gating_ein_0"), (2 * 2048, 640));
    assert_eq!(reg.extents("linear_w_0"), (640, 2048));
    assert_eq!(reg.extents("query_norm_0"), (1, 256));
    assert_eq!(reg.extents("img_pos_emb"), (0, 0), "no vision tower");
    assert_eq!(reg.extents("qkv_ein_18"), (0, 0), "only 18 layers");

    let exported = exported_tensors(&c);
    assert_eq!(exported.len(), 2 + 18 * 10);
    assert_eq!(exported[0].0, "c_embedding");
    let layer0: Vec<&str> = exported[2..12].iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        layer0,
        [
            "att_ein_0",
            "qkv_ein_0",
            "gating_ein_0",
            "linear_w_0",
            "pre_att_ns_0",
            "pre_ff_ns_0",
            "post_att_ns_0",
            "post_ff_ns_0",
            "key_norm_0",
            "query_norm_0"
        ]
    );
    let slots = tensor_slots(&c);
    assert!(slots.iter().any(|s| s.name == "qkv1_w_0" && !s.must_read && !s.exported));

    let pg = ModelConfig::new(Model::PaliGemma2_3B_224, SbsType::SFP, PromptWrapping::PaliGemma);
    let exported = exported_tensors(&pg);
    assert!(exported.iter().any(|t| t.0 == "qkv_ein_w_26" && t.1 == 16 * 3 * 72 && t.2 == 1152));
    assert!(exported.iter().any(|t| t.0 == "img_emb_kernel" && t.1 == 1152 && t.2 == 14 * 14 * 3));
}

#[test]
fn tensor_record_wire_format() {
    let r = TensorRecord::new("qkv_ein_0", SbsType::SFP, 1536, 640).unwrap();
    assert_eq!((r.element_bytes, r.num_elements, r.stride, r.scale), (1, 1536 * 640, 640, 1.0));
    let words = write_fields(&r).unwrap();
    // size, name (3 words: "qkv_", "ein_", "0"), type, element bytes, elements, rows, cols, scale, stride
    assert_eq!(words[0], 11);
    assert_eq!(words[1], 3);
    assert_eq!(words[2], u32::from_le_bytes(*b"qkv_"));
    assert_eq!(words[4], u32::from(b'0'));
    assert_eq!(&words[5..], &[3, 1, 1536 * 640, 1536, 640, 1.0f32.to_bits(), 640]);

    // NUQ: 16 one-byte cluster centres per 256 values plus two 4-bit indices per byte.
    let nuq = TensorRecord::new("linear_w_0", SbsType::NUQ, 640, 2048).unwrap();
    assert_eq!(nuq.num_elements as u64, 640 * 2048 / 256 * 16 + 640 * 2048 / 2);
    // I8: a bf16 scale and zero point per 128 values, plus one byte per value.
    let i8 = TensorRecord::new("linear_w_0", SbsType::I8, 3, 100).unwrap();
    assert_eq!(i8.num_elements, 3 * 2 + 3 * 2 + 300);
    assert_eq!(SbsType::BF16.element_bytes(), 2);
    assert_eq!(SbsType::from_id(8), Some(SbsType::I8));
    assert_eq!(SbsType::from_id(9), None);
}

#[test]
fn gemma3_270m_config_words_in_gemma_cpp_order() {
    let c = ModelConfig::new(Model::Gemma3_270M, SbsType::SFP, PromptWrapping::GemmaIt);
    let w = write_fields(&c).unwrap();
    assert_eq!(w[0] as usize, w.len() - 1, "leading size excludes itself");
    let name: Vec<u32> = [*b"Gemm", *b"a3_2", [b'7', b'0', b'M', 0]].iter().map(|b| u32::from_le_bytes(*b)).collect();
    let head = [
        1, // model_family_version
        3, name[0], name[1], name[2], // display_name "Gemma3_270M"
        18,      // model GEMMA3_270M
        0,       // wrapping GEMMA_IT
        3,       // weight SFP
        18, 640, 262_144, 32_768, // num_layers, model_dim, vocab_size, max_seq_len
        0,      // unused_num_tensor_scales
        0, 0, // att_cap, final_cap (0.0)
        0, 0,  // absolute_pe, unused_use_local_attention
        0,  // query_scale SqrtKeySize
        18, // layer_configs count
    ];
    assert_eq!(&w[1..1 + head.len()], &head);
    let layer = [15, 640, 0, 2048, 4, 1, 256, 0, 0, 0, 1, 1, 0, 0, 0, 1];
    let at = 1 + head.len();
    assert_eq!(
        &w[at..at + layer.len()],
        &layer,
        "size, dims, griffin dim 0, conv width 0, biases, gating, norms, types"
    );
    let windows_at = at + 18 * layer.len();
    assert_eq!(w[windows_at], 18);
    assert_eq!(&w[windows_at + 1..windows_at + 7], &[512, 512, 512, 512, 512, 32_768]);
    // norm_num_groups, then the (empty) ViT config: size 7, dims, patch 14, image 224, no layers, pool 1.
    let vit_at = windows_at + 19;
    assert_eq!(&w[vit_at..vit_at + 9], &[1, 7, 0, 0, 0, 14, 224, 0, 1]);
    // pool_dim, eos ids 1 and 106, then 8 scale base names.
    assert_eq!(&w[vit_at + 9..vit_at + 13], &[1, 1, 106, 8]);
}
