"""Tasks for transformers models: causal LMs, encoders (sentence embeddings), sequence
classifiers and image classifiers, from a local directory (config.json + safetensors) or a GGUF file.

Everything that can fail on the user's input is checked before the weights load: the folder
(config.json, safetensors, no pickle-only checkpoint), the architecture (transformers must know
it), the tokenizer (image classifiers: the image processor), and the calibration data (enough
tokens for the windows asked for; enough readable images for the samples and the held-out part).

Losses (batches live on the task's device):
- causal LM: next-token cross-entropy; quality: held-out perplexity.
- encoder: 1 − cosine between the mean-pooled, L2-normalized embedding and the unquantized one
  (MiniLM / sentence-transformers); the Fisher probe uses random ±1 output projections;
  quality: held-out cosine.
- sequence classifier: label-free, KL(p_unquantized ‖ p_model) of the predicted class
  distribution; the Fisher probe is the cross-entropy to labels sampled once from p_unquantized
  (the true Fisher, not the empirical one); quality: agreement with the unquantized predictions.
- image classifier: the same loss, probe and quality as a sequence classifier (`classifier_parts`),
  on batches of `pixel_values` made by the folder's own image processor from `--calib FOLDER`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bitalloc.errors import BitallocError
from bitalloc.models.data import (batches, calibration_text, image_files, read_image, sentences, split_images,
                                  token_windows)

KINDS = ("causal", "encoder", "classifier", "image")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
LM_BATCH, TEXT_BATCH, IMAGE_BATCH = 4, 16, 16
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def _quiet():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def check_directory(path) -> dict:
    """The parsed config.json of a transformers model folder; refuses a folder without config.json,
    without safetensors weights, or with pickle checkpoints only (one line each, no torch)."""
    p = Path(path)
    where = f"--model {str(p)!r}"
    if not (p / "config.json").is_file():
        raise BitallocError(f"{where}: no config.json in the folder (a transformers model directory holds "
                            "config.json and *.safetensors)")
    if not list(p.glob("*.safetensors")):
        pickles = sorted(f.name for f in p.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise BitallocError(f"{where}: only pickle checkpoints ({', '.join(pickles[:3])}); bitalloc never "
                                "unpickles (it can run arbitrary code): save the model with safetensors "
                                "(model.save_pretrained(dir, safe_serialization=True))")
        raise BitallocError(f"{where}: no *.safetensors weights in the folder")
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BitallocError(f"{where}: config.json is not valid JSON ({type(e).__name__})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise BitallocError(f"{where}: config.json has no model_type")
    return config


def load_config(path):
    """transformers' config of a model folder, or one line naming the architecture it cannot load."""
    _quiet()
    from transformers import AutoConfig

    raw = check_directory(path)
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BitallocError(f"--model {str(path)!r}: transformers cannot load architecture "
                            f"{raw.get('model_type')!r} ({first[:160]})") from None


def model_kind(config) -> str:
    """causal | encoder | classifier | image, from the config's `architectures` (else its model type)."""
    from transformers.models.auto import modeling_auto as ma

    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal"
    if arch.endswith("ForSequenceClassification"):
        return "classifier"
    if arch.endswith("ForImageClassification"):
        return "image"
    mt = config.model_type
    if not arch and mt in ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal"
    if mt in ma.MODEL_MAPPING_NAMES:
        return "encoder"
    raise BitallocError(f"architecture {arch or mt!r}: not a causal LM, encoder, sequence classifier "
                        "or image classifier transformers' Auto classes load")


def auto_class(kind: str):
    """The transformers Auto class that loads a model of `kind` (see KINDS)."""
    import transformers

    return getattr(transformers, {"causal": "AutoModelForCausalLM", "encoder": "AutoModel",
                                  "classifier": "AutoModelForSequenceClassification",
                                  "image": "AutoModelForImageClassification"}[kind])


def load_tokenizer(path, gguf_file: str | None = None):
    _quiet()
    from transformers import AutoTokenizer

    try:
        if gguf_file:
            return AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # a missing or broken tokenizer: one line
        raise BitallocError(f"--model {str(path)!r}: no usable tokenizer in the folder ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


def load_image_processor(path):
    """The folder's own image processor (preprocessor_config.json), or one line."""
    _quiet()
    from transformers import AutoImageProcessor

    if not (Path(path) / "preprocessor_config.json").is_file():
        raise BitallocError(f"--model {str(path)!r}: no preprocessor_config.json in the folder (an image classifier "
                            "needs its image processor: processor.save_pretrained(dir))")
    try:
        return AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # a broken or unknown processor: one line
        raise BitallocError(f"--model {str(path)!r}: no usable image processor in the folder ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


# ---- data, before the weights load ---------------------------------------------------------
def text_data(kind: str, tok, calib, samples: int, seq_len: int, seed: int, held_out: int | None):
    """(calibration batches, held-out batches, description) for a model kind: token windows of a
    causal LM (CPU int64 tensors), tokenized sentence batches (dicts) for encoders/classifiers."""
    import torch

    cal_text, held_text = calibration_text(calib, seed)
    desc = "pydoc_data topics" if calib is None else f"{calib}"
    if kind == "causal":
        ids = lambda t: np.asarray(tok(t)["input_ids"], dtype=np.int64)  # noqa: E731
        where = "the calibration text" if calib is None else f"--calib {str(calib)!r} (calibration part)"
        cal = torch.from_numpy(token_windows(ids(cal_text), samples, seq_len, seed, what=where))
        held = torch.from_numpy(token_windows(ids(held_text), held_out or 8, seq_len, seed + 1,
                                              what=where.replace("calibration part", "held-out part")))
        return batches(cal, LM_BATCH), batches(held, LM_BATCH), f"{desc} ({seq_len}-token windows)"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    enc = lambda texts: dict(tok(texts, padding=True, truncation=True, max_length=seq_len,  # noqa: E731
                                 return_tensors="pt"))
    where = "the calibration text" if calib is None else f"--calib {str(calib)!r}"
    cal = [enc(b) for b in batches(sentences(cal_text, samples, seed, what=where), TEXT_BATCH)]
    held = [enc(b) for b in batches(sentences(held_text, held_out or 64, seed + 1, what=where + " (held-out)"),
                                    TEXT_BATCH)]
    return cal, held, f"{desc} (paragraphs)"


def image_data(proc, calib, samples: int, seed: int, held_out: int | None, where: str):
    """(calibration batches, held-out batches, description) of an image classifier: the images of
    the --calib folder (disjoint parts, see `data.split_images`), preprocessed by `proc` into
    batches {"pixel_values": tensor} of IMAGE_BATCH images."""
    if calib is None:
        raise BitallocError(f"{where}: an image classifier needs --calib FOLDER of images "
                            "(.png, .jpg, .jpeg, .bmp, .webp)")
    at = f"--calib {str(calib)!r}"
    cal_files, held_files = split_images(image_files(calib), samples, held_out, seed, where=at)

    def encode(files):
        images = [read_image(f, at) for f in files]
        try:
            pix = proc(images=images, return_tensors="pt")["pixel_values"]
        except Exception as e:  # the processor refuses an image: one line
            raise BitallocError(f"{at}: the image processor cannot prepare the images ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
        return {"pixel_values": pix}

    cal = [encode(b) for b in batches(cal_files, IMAGE_BATCH)]
    held = [encode(b) for b in batches(held_files, IMAGE_BATCH)]
    return cal, held, f"{calib} ({len(cal_files)} calibration + {len(held_files)} held-out images)"


# ---- losses -----------------------------------------------------------------------------------
def embed(model, batch):
    """Sentence embedding: mean over the attention mask, L2-normalized (sentence-transformers), float32."""
    import torch

    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    out = model(**kw)
    h = out.last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=-1)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k in INPUT_KEYS}


def causal_lm_parts(held):
    """(loss, quality, probe_loss) of a causal LM."""
    import torch

    def loss(m, batch):
        return m(input_ids=batch, labels=batch).loss

    def quality(m):
        with torch.no_grad():
            nll = float(torch.stack([loss(m, b).float() for b in held]).mean())
        return {"perplexity": float(np.exp(nll)), "loss": nll}

    return loss, quality, None


def encoder_parts(model, cal, held):
    """(loss, quality, probe_loss) of an encoder; adds each batch's unquantized embedding as `target`."""
    import torch

    with torch.no_grad():
        for b in cal + held:
            b["target"] = embed(model, b)

    def loss(m, batch):
        return (1 - torch.nn.functional.cosine_similarity(embed(m, batch), batch["target"], dim=-1)).mean()

    def probe_loss(m, batch, gen):
        e = embed(m, batch)
        v = torch.randint(0, 2, e.shape, generator=gen).to(e.device, e.dtype) * 2 - 1
        return (e * v).sum() / len(e) ** 0.5

    def quality(m):
        with torch.no_grad():
            cos = torch.cat([torch.nn.functional.cosine_similarity(embed(m, b), b["target"], dim=-1) for b in held])
        return {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}

    return loss, quality, probe_loss


def classifier_parts(model, cal, held, seed: int):
    """(loss, quality, probe_loss) of a sequence or image classifier; adds `target` (the unquantized class
    probabilities) and `probe_labels` (one label per sample drawn from them) to each batch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in cal + held:
            p = torch.softmax(model(**_inputs(b)).logits.float(), -1)
            b["target"] = p
            b["probe_labels"] = torch.multinomial(p.cpu(), 1, generator=gen)[:, 0].to(p.device)

    def logp(m, batch):
        return torch.log_softmax(m(**_inputs(batch)).logits.float(), -1)

    def loss(m, batch):
        t = batch["target"]
        return (t * (t.clamp_min(1e-12).log() - logp(m, batch))).sum(-1).mean()

    def probe_loss(m, batch, gen):
        return torch.nn.functional.nll_loss(logp(m, batch), batch["probe_labels"])

    def quality(m):
        with torch.no_grad():
            agree, kl, n = 0.0, 0.0, 0
            for b in held:
                lp = logp(m, b)
                agree += float((lp.argmax(-1) == b["target"].argmax(-1)).sum())
                kl += float((b["target"] * (b["target"].clamp_min(1e-12).log() - lp)).sum())
                n += len(lp)
        return {"agreement": agree / n, "kl": kl / n}

    return loss, quality, probe_loss


# ---- loading -----------------------------------------------------------------------------------
def load_directory(path, *, name: str | None = None, calib=None, samples: int = 8, seq_len: int = 128,
                   seed: int = 0, held_out: int | None = None, device="cpu", dtype=None, device_map=None,
                   include=None, exclude=None, meta: dict | None = None):
    """A Task for a local transformers model folder (see the module docstring)."""
    config = load_config(path)
    kind = model_kind(config)
    if kind == "image":
        where = f"--model {str(path)!r} ({(getattr(config, 'architectures', None) or [config.model_type])[0]})"
        if calib is None:  # before the processor: the first thing to fix
            image_data(None, calib, samples, seed, held_out, where)
        tok = load_image_processor(path)
        cal, held, desc = image_data(tok, calib, samples, seed, held_out, where)
    else:
        tok = load_tokenizer(path)
        cal, held, desc = text_data(kind, tok, calib, samples, seq_len, seed, held_out)
    cls = auto_class(kind)
    from bitalloc.models.quantized_dir import is_quantized_directory, load_weights

    kw = dict(local_files_only=True, use_safetensors=True, dtype=dtype)
    if device_map is not None:
        kw["device_map"] = device_map
    try:
        if is_quantized_directory(path):  # written by `bitalloc apply`: config + rest + packed units
            model = cls.from_config(config, dtype=dtype)
            load_weights(model, path)
        else:
            model = cls.from_pretrained(str(path), **kw)
    except (ValueError, OSError, KeyError) as e:
        raise BitallocError(f"--model {str(path)!r}: {cls.__name__} cannot load it ({str(e).splitlines()[0][:160]})") from None
    info = {"model": name or Path(path).name, "source": str(path), "architecture": config.model_type,
            "kind": kind, "calibration": desc, **(meta or {})}
    return build_task(name or Path(path).name, kind, model, cal, held, device, device_map, samples, seq_len, seed,
                      include, exclude, info, tok)


def gguf_architecture(path) -> str:
    """`general.architecture` of a GGUF file (memory-mapped header read; one-line errors)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        return str(reader.fields["general.architecture"].contents())
    except Exception as e:
        raise BitallocError(f"--model {str(path)!r}: not a readable GGUF file ({type(e).__name__})") from None


def load_gguf(path, *, name: str | None = None, calib=None, samples: int = 8, seq_len: int = 128, seed: int = 0,
              held_out: int | None = None, device="cpu", dtype=None, device_map=None, include=None, exclude=None,
              meta: dict | None = None):
    """A causal-LM Task from a GGUF file (transformers dequantizes it into plain torch layers)."""
    _quiet()
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = Path(path)
    arch = gguf_architecture(path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise BitallocError(f"--model {str(path)!r}: GGUF architecture {arch!r} is not one transformers loads "
                            f"({', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))})")
    tok = load_tokenizer(path.parent, gguf_file=path.name)
    cal, held, desc = text_data("causal", tok, calib, samples, seq_len, seed, held_out)
    kw = {"device_map": device_map} if device_map is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **kw)
    except (ValueError, OSError, KeyError, NotImplementedError) as e:
        raise BitallocError(f"--model {str(path)!r}: transformers cannot load this GGUF ({str(e).splitlines()[0][:160]})") from None
    info = {"model": name or path.stem, "source": str(path), "architecture": arch, "kind": "causal",
            "calibration": desc, **(meta or {})}
    return build_task(name or path.stem, "causal", model, cal, held, device, device_map, samples, seq_len, seed,
                      include, exclude, info, tok)


def build_task(name, kind, model, cal, held, device, device_map, samples, seq_len, seed, include, exclude, info,
               tokenizer=None):
    """Model on its device in eval mode, batches moved there, loss/quality for its kind, layers found."""
    import torch

    from bitalloc.models.device import to_device
    from bitalloc.models.layers import discover
    from bitalloc.models.task import Task, used_layers

    model.eval()
    if device_map is None:
        model.to(device)
        first = device
    else:
        first = next(model.parameters()).device
    cal, held = to_device(cal, first), to_device(held, first)
    if kind == "causal":
        loss, quality, probe = causal_lm_parts(held)
    elif kind == "encoder":
        loss, quality, probe = encoder_parts(model, cal, held)
    else:  # sequence and image classifiers: one loss, probe and quality
        loss, quality, probe = classifier_parts(model, cal, held, seed)
    layers = discover(model, include, exclude)
    if kind in ("classifier", "image"):  # the classification head is the output head of a classifier
        layers = [n for n in layers if not n.split(".")[0] in ("score", "classifier")] or layers
    one = _first(cal[0])
    layers, unused = used_layers(model, layers, lambda: (probe or (lambda m, b, g: loss(m, b)))(
        model, one, torch.Generator().manual_seed(0)))
    if kind == "image":  # per image: a conv's output positions, a ViT linear's tokens
        from bitalloc.models.task import count_macs

        macs, per = count_macs(model, layers, lambda: model(**_inputs(one))), "image"
    else:
        mods = dict(model.named_modules())
        macs, per = {n: int(mods[n].weight.numel()) for n in layers}, "token"
    dtype = next(model.parameters()).dtype
    info = {**info, "samples": samples, "seq_len": seq_len, "seed": seed, "macs_per": per,
            "device": str(first), "dtype": str(dtype).replace("torch.", "")}
    if unused:
        info["unused_layers"] = unused
    return Task(name, model, cal, held, layers, loss, quality, macs, probe_loss=probe, meta=info, tokenizer=tokenizer)


def _first(batch):
    """One sample of a batch (a tensor or a dict of tensors)."""
    if isinstance(batch, dict):
        return {k: v[:1] for k, v in batch.items()}
    return batch[:1]
