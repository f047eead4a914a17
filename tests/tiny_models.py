"""Tiny random transformers models of several architectures, saved as model folders with a small
BPE tokenizer trained on the pydoc text (no download). Used by test_own_model.py and the memory
benchmark."""
from __future__ import annotations

from pathlib import Path

VOCAB = 384


def tokenizer(vocab: int = VOCAB):
    """A byte-level BPE tokenizer trained on Python's pydoc topics (about a second)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((topics[k] for k in sorted(topics)), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def configs(vocab: int = VOCAB, hidden: int = 32, layers: int = 2) -> dict:
    """architecture name → a transformers config (tiny sizes)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=2 * hidden, max_position_embeddings=256)
    return {
        "llama": LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**common, num_key_value_heads=2),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256,
                           bos_token_id=1, eos_token_id=2),
        "bert": BertConfig(**common, type_vocab_size=2),
        "phi3": Phi3Config(**common, num_key_value_heads=4, pad_token_id=3, bos_token_id=1, eos_token_id=2),
    }


def build(arch: str, folder: Path, tok=None, seed: int = 0, **sizes) -> Path:
    """Save a random model of `arch` (and the tokenizer) in `folder`; returns the folder."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = configs(**sizes)[arch]
    cls = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = cls.from_config(cfg)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    (tok or tokenizer()).save_pretrained(str(folder))
    return folder


_GGUF_REF: dict = {}


def write_gguf(path: Path, tokenizer_source: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny random Llama written as an F32 GGUF by gguf-py, tensor names from gguf's name map
    (q/k permuted as llama.cpp's converter does), tokenizer metadata copied from `tokenizer_source`."""
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    reader = gguf.GGUFReader(str(tokenizer_source))
    vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=256,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(2 * hidden)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(hidden // 4)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else 10000.0)
    for f in reader.fields.values():
        if f.name.startswith("tokenizer."):
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    _GGUF_REF.clear()
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        _GGUF_REF[name] = t.clone()
        x = t.detach().numpy().astype(np.float32)
        heads = 4 if name.endswith("q_proj.weight") else 2 if name.endswith("k_proj.weight") else None
        if heads:
            x = x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        w.add_tensor(tmap.get_name(name, try_suffixes=(".weight",)), x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_reference() -> dict:
    """The transformers tensors of the last `write_gguf` model (name → tensor)."""
    return dict(_GGUF_REF)


IMAGE_ARCHS = ("vit", "resnet")


def image_configs(image_size: int = 32, hidden: int = 32, layers: int = 2, labels: int = 5) -> dict:
    """image architecture name → (a transformers config, its image processor), tiny sizes."""
    from transformers import ResNetConfig, ViTConfig
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return {
        "vit": (ViTConfig(image_size=image_size, patch_size=8, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=4, intermediate_size=2 * hidden, num_labels=labels),
                ViTImageProcessorPil(size={"height": image_size, "width": image_size})),
        "resnet": (ResNetConfig(embedding_size=hidden // 2, hidden_sizes=[hidden // 2, hidden], depths=[1] * layers,
                                layer_type="basic", num_labels=labels),
                   ConvNextImageProcessorPil(size={"shortest_edge": image_size})),
    }


def build_image(arch: str, folder: Path, seed: int = 0, **sizes) -> Path:
    """Save a random image classifier of `arch` with its image processor in `folder`; returns the folder."""
    import torch
    from transformers import AutoModelForImageClassification

    torch.manual_seed(seed)
    cfg, proc = image_configs(**sizes)[arch]
    model = AutoModelForImageClassification.from_config(cfg)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    proc.save_pretrained(str(folder))
    return folder


def write_images(folder: Path, n: int = 12, seed: int = 0) -> Path:
    """`n` small PNG/JPEG images (smooth random colour fields plus noise, sizes 24–48 px) in `folder`."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(24, 49, size=2))
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        a = rng.normal(size=(3, 3))
        base = np.stack([np.sin(6 * (a[c, 0] * x + a[c, 1] * y) + a[c, 2]) for c in range(3)], -1)
        pix = np.clip(127.5 * (1 + base) + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pix).save(folder / f"img{i:02d}.{'jpg' if i % 4 == 3 else 'png'}")
    return folder
