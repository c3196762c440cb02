"""The bar VAE: one bar of tokens <-> a latent vector whose frozen mean feeds G (SFS.md sections 1, 3).

Letters: B bars (the batch), T tokens of one bar (``max_bar_tokens``), L latent size, D model width.

Place in the data flow: [5] trained alone, before SFS, on random bars
(``sfs_jax.data.bars.make_bar_loader``); then frozen, and ``embed_bars`` of every bar of
every song is computed once (``sfs_jax.data.bars.compute_bar_embeddings``) and stored with
the VAE's fingerprint. Those vectors are the per-bar inputs of the global view G
(SFS.md section 1: "every bar of the song gets a 256-d embedding from a frozen,
pretrained bar VAE"). G reads the mean ``mu``, not a sample, so a bar always maps to
the same vector.

A bar is written in the target form of SFS.md section 2 restricted to 32 frames
(``tokenizer.encode_target(notes_of_bar, 32)``): 32 FRAME tokens, the notes, END,
zero (PAD) padded to T. Token fields are the dict keys ``tokenizer.TOKEN_FIELDS``,
each int32 BxT; the ``frame`` column (0..31, END at 32) is the rotary position, so
attention sees musical time within the bar, not token index (as everywhere in SFS).

Why the latent enters every decoder sublayer (``Block``'s ``condition_BxTxD``, the
mechanism the SFS decoder uses for G): a latent added only to the input embedding is
easy for an autoregressive decoder to ignore (posterior collapse); feeding it at every
layer, together with the cyclic KL schedule of ``cyclic_beta`` (Fu et al. 2019, the
"beta 0.1 with a cyclic schedule" of SFS.md section 3), keeps it informative.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfs_jax.model import layers
from sfs_jax.model import token_layout as layout_lib
from sfs_jax.model.attention import FastPath, causal_mask, padding_mask
from sfs_jax.model.config import BarVAEConfig, ModelConfig
from sfs_jax.model.decoder import Heads
from sfs_jax.model.embeddings import START_TYPE, BeatCode, TokenEmbedding
from sfs_jax.model.initializers import embed, linear, normal_param
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.tokenizer import TOKEN_FIELDS, TokenType

HEAD_NAMES = ("type", "pitch", "velocity", "duration")
_PAD, _NOTE, _END = int(TokenType.PAD), int(TokenType.NOTE), int(TokenType.END)

Tokens = Mapping[str, jax.Array]


def shift_right_bar(tokens: Tokens) -> dict[str, jax.Array]:
    """v1 decoder inputs: every field moved one step right, START (type START_TYPE, frame 0) in front.

    Input token i is bar token i-1 at its own frame, like ``token_layout.shift_right``
    for targets, so the rotary position of input i never reveals where token i falls.
    """
    start = {"type": START_TYPE}
    return {name: jnp.pad(tokens[name][:, :-1], ((0, 0), (1, 0)), constant_values=start.get(name, 0))
            for name in TOKEN_FIELDS}


def without_end(tokens: Tokens) -> dict[str, jax.Array]:
    """The reference's bar form: frame tokens and notes, no END (its row becomes PAD)."""
    is_end = tokens["type"] == _END
    return {name: jnp.where(is_end, 0, tokens[name]) for name in TOKEN_FIELDS}


def reparameterize(mu_BxL: jax.Array, logvar_BxL: jax.Array, key: jax.Array) -> jax.Array:
    """z = mu + sigma * eps with eps ~ N(0, 1) drawn from the explicit ``key``."""
    eps_BxL = jax.random.normal(key, mu_BxL.shape, mu_BxL.dtype)
    return mu_BxL + jnp.exp(0.5 * logvar_BxL) * eps_BxL


class BarVAE(nnx.Module):
    """Bidirectional encoder to (mu, log-variance); causal decoder conditioned on z; ``Heads``.

    Widths come from ``config`` (``ModelConfig.vae``), the block style, token layout and
    head width from the SFS model's ``model`` config (default: the reference's).

    Reference form (``token_layout="reference"``, ``../shared/reference/README.md`` 5.8):
    a bar is its FRAME tokens and notes, then END in training (the authors' VAE
    trains on END-terminated bars and embeds bars without END for G). The encoder adds
    only the beat one-hot code, appends a learned summary token after the padded end
    (index T, so its rotary position is the padded length: bars are always padded to
    ``max_bar_tokens`` here, which makes a bar's latent independent of its batch) and
    reads mu and log-variance from it. The decoder adds the beat code, conditions every
    sublayer on z through a residual MLP, rotates by token index, and predicts token
    i + 1 from token i (END, a FRAME-class prediction, included).
    v1: the encoder mean-pools its outputs; the decoder has a START input and z enters
    through one linear layer.
    """

    def __init__(self, config: BarVAEConfig, *, model: ModelConfig | None = None, rngs: nnx.Rngs) -> None:
        model = ModelConfig(vae=config) if model is None else dataclasses.replace(model, vae=config)
        if config.max_bar_tokens < notes_lib.FRAMES_PER_BAR + 1:
            raise ValueError(f"max_bar_tokens {config.max_bar_tokens} cannot hold an empty bar "
                             f"({notes_lib.FRAMES_PER_BAR} FRAME tokens + END)")
        style, decoder_style = layers.vae_block_style(model), layers.vae_block_style(model, decoder=True)
        d_model, d_decoder, init = config.d_model, config.decoder_width, model.init
        self.config = config
        self.layout = model.token_layout
        make_block = lambda: layers.Block(d_model, style, cross_attention=False, rngs=rngs)
        make_decoder_block = lambda: layers.Block(d_decoder, decoder_style, cross_attention=False, rngs=rngs)
        token_embedding = lambda d: TokenEmbedding(d, token_layout=self.layout, init=init, rngs=rngs)
        reference = self.layout == "reference"
        # Encoder: q(z | bar).
        self.encoder_embed = token_embedding(d_model)
        if reference:
            self.encoder_code = BeatCode(d_model)
            self.summary = normal_param((d_model,), init=init, rngs=rngs)
        else:
            self.encoder_frame = embed(notes_lib.FRAMES_PER_BAR, d_model, init=init, rngs=rngs)
        self.encoder_rotary = style.rotary()
        self.encoder_blocks = layers.stack(config.n_encoder_layers, make_block)
        self.encoder_norm = layers.layer_norm(d_model, style, rngs)
        self.to_mu = linear(d_model, config.latent_dim, init=init, rngs=rngs)
        self.to_logvar = linear(d_model, config.latent_dim, init=init, rngs=rngs)
        # Decoder: p(bar | z), autoregressive over the same tokens.
        self.decoder_embed = token_embedding(d_decoder)
        if reference:
            self.decoder_code = BeatCode(d_decoder)
            self.latent_condition = layers.ResidualMLP(config.latent_dim, d_decoder, style=decoder_style, rngs=rngs)
        else:
            self.decoder_frame = embed(notes_lib.FRAMES_PER_BAR, d_decoder, init=init, rngs=rngs)
            self.latent_condition = linear(config.latent_dim, d_decoder, init=init, rngs=rngs)
        self.decoder_rotary = decoder_style.rotary()
        self.decoder_blocks = layers.stack(config.n_decoder_layers, make_decoder_block)
        self.decoder_norm = layers.layer_norm(d_decoder, decoder_style, rngs)
        self.heads = Heads(d_decoder, decoder_style, token_layout=self.layout, hidden_dim=model.head_hidden_dim,
                           rngs=rngs)

    def _embed(self, part: str, tokens: Tokens) -> jax.Array:
        """Token embedding plus the frame-in-bar code (v1: a learned vector; END's frame 32 uses row 31)."""
        content = getattr(self, f"{part}_embed")(tokens["type"], tokens["pitch"], tokens["velocity"],
                                                 tokens["duration"])
        if self.layout == "reference":
            return content + getattr(self, f"{part}_code")(tokens["frame"])
        frame_BxT = jnp.clip(tokens["frame"], 0, notes_lib.FRAMES_PER_BAR - 1)
        return content + getattr(self, f"{part}_frame")(frame_BxT)

    def inference_form(self, tokens: Tokens) -> Tokens:
        """The bar tokens the frozen encoder embeds for G: the reference drops END (it trains with it), v1 keeps it."""
        return without_end(tokens) if self.layout == "reference" else tokens

    def encode(self, tokens: Tokens) -> tuple[jax.Array, jax.Array]:
        """(mu_BxL, logvar_BxL) of q(z | bar)."""
        return self.encode_features(tokens)[1:]

    def encode_features(self, tokens: Tokens) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(pooled_BxD, mu_BxL, logvar_BxL): the encoder's summary of the bar and the posterior."""
        valid_BxT = tokens["type"] != _PAD
        x_BxTxD = self._embed("encoder", tokens)
        batch_size, n_tokens = valid_BxT.shape
        if self.layout == "reference":
            summary = jnp.broadcast_to(self.summary.value.astype(x_BxTxD.dtype), (batch_size, 1, x_BxTxD.shape[-1]))
            x_BxTxD = jnp.concatenate([x_BxTxD, summary], axis=1)
            valid_BxT = jnp.concatenate([valid_BxT, jnp.ones((batch_size, 1), bool)], axis=1)
            positions_BxT = jnp.broadcast_to(jnp.arange(n_tokens + 1), valid_BxT.shape)
            fast = None
        else:
            positions_BxT = tokens["frame"]
            lengths_B = jnp.sum(valid_BxT, axis=1)
            fast = FastPath(is_causal=False, query_lengths_B=lengths_B, key_lengths_B=lengths_B)
        mask_BxTxT = padding_mask(valid_BxT, valid_BxT)
        rope = self.encoder_rotary.angles(positions_BxT)
        for block in self.encoder_blocks:
            x_BxTxD = block(x_BxTxD, rope, mask_BxTxT, fast_path=fast)
        h_BxTxD = self.encoder_norm(x_BxTxD)
        if self.layout == "reference":
            pooled_BxD = h_BxTxD[:, -1]
        else:
            weight_BxTx1 = valid_BxT[..., None].astype(h_BxTxD.dtype)
            pooled_BxD = jnp.sum(h_BxTxD * weight_BxTx1, axis=1) / jnp.maximum(jnp.sum(weight_BxTx1, axis=1), 1.0)
        return pooled_BxD, self.to_mu(pooled_BxD), self.to_logvar(pooled_BxD)

    def decode(self, tokens: Tokens, z_BxL: jax.Array) -> dict[str, jax.Array]:
        """Teacher-forced logits of the four heads at every decoder position, given the latent z.

        Velocity is conditioned on the true pitch and duration on the true pitch and
        velocity of the predicted token, as in the SFS decoder (SFS.md section 3).
        """
        inputs = tokens if self.layout == "reference" else shift_right_bar(tokens)
        valid_BxT = inputs["type"] != _PAD if self.layout == "reference" else tokens["type"] != _PAD
        lengths_B = jnp.sum(valid_BxT, axis=1)
        fast = FastPath(is_causal=True, query_lengths_B=lengths_B, key_lengths_B=lengths_B)
        x_BxTxD = self._embed("decoder", inputs)
        condition_BxTxD = jnp.broadcast_to(self.latent_condition(z_BxL)[:, None, :], x_BxTxD.shape)
        n_tokens = x_BxTxD.shape[1]
        mask_BxTxT = causal_mask(n_tokens)[None] & padding_mask(valid_BxT, valid_BxT)
        # Rotary positions: token index (the reference's TokenGenerator) or frame (v1).
        positions_BxT = (jnp.broadcast_to(jnp.arange(n_tokens), valid_BxT.shape) if self.layout == "reference"
                         else inputs["frame"])
        rope = self.decoder_rotary.angles(positions_BxT)
        for block in self.decoder_blocks:
            x_BxTxD = block(x_BxTxD, rope, mask_BxTxT, condition_BxTxD=condition_BxTxD, fast_path=fast)
        h_BxTxD = self.decoder_norm(x_BxTxD)
        return self.heads.teacher_forced(h_BxTxD, predicted_bar_tokens(tokens, self.layout))

    def __call__(self, tokens: Tokens, key: jax.Array) -> dict[str, jax.Array]:
        """Logits of the four heads (decoded from a sample z drawn with ``key``), plus mu and logvar."""
        mu_BxL, logvar_BxL = self.encode(tokens)
        logits = self.decode(tokens, reparameterize(mu_BxL, logvar_BxL, key))
        return {**logits, "mu": mu_BxL, "logvar": logvar_BxL}

    def embed_bars(self, tokens: Tokens) -> jax.Array:
        """The frozen bar embedding that G reads: the posterior mean mu_BxL of the inference form (deterministic)."""
        mu_BxL, _ = self.encode(self.inference_form(tokens))
        return mu_BxL


def make_bar_vae(model: ModelConfig, rngs: nnx.Rngs) -> BarVAE:
    """The bar VAE of an SFS model config (``model.vae`` widths, the model's style)."""
    return BarVAE(model.vae, model=model, rngs=rngs)


def predicted_bar_tokens(tokens: Tokens, layout: str) -> dict[str, jax.Array]:
    """type, pitch, velocity, duration of the token each VAE decoder position predicts."""
    fields = {name: tokens[name] for name in ("type", "pitch", "velocity", "duration")}
    return fields if layout == "v1" else {name: layout_lib.shift_left(x) for name, x in fields.items()}


def _cross_entropy(logits_BxTxC: jax.Array, labels_BxT: jax.Array, weight_BxT: jax.Array) -> jax.Array:
    """Per-token -log p(label), zero where ``weight_BxT`` is False (labels there may be out of range)."""
    n_classes = logits_BxTxC.shape[-1]
    labels_BxT = jnp.clip(labels_BxT, 0, n_classes - 1)
    log_probs = jax.nn.log_softmax(logits_BxTxC.astype(jnp.float32), axis=-1)
    nll_BxT = -jnp.take_along_axis(log_probs, labels_BxT[..., None], axis=-1)[..., 0]
    return jnp.where(weight_BxT, nll_BxT, 0.0)


def vae_normalizers(batch: Tokens, layout: str = "reference") -> dict[str, jax.Array]:
    """Real bars and scored tokens per head over the whole batch: the denominators of ``vae_loss``."""
    labels = _head_labels(batch, layout)
    return {"n_bars": jnp.sum(jnp.any(batch["type"] != _PAD, axis=1)),
            **{f"{name}_count": jnp.sum(weight_BxT) for name, (_, weight_BxT) in labels.items()}}


def _head_labels(batch: Tokens, layout: str) -> dict[str, tuple[jax.Array, jax.Array]]:
    """(labels, weights) per head of the tokens the decoder predicts (``token_layout.head_labels``)."""
    return layout_lib.head_labels(predicted_bar_tokens(batch, layout), layout)


def vae_loss(model: BarVAE, batch: Tokens, key: jax.Array, beta: float | jax.Array,
             normalizers: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative beta-ELBO per bar, averaged over the real bars of the batch; pure, jit-able.

    Reconstruction is the sum over the bar's tokens of the four cross-entropies (type
    over real tokens; pitch, velocity and duration over NOTE tokens, teacher forced), as
    in the SFS loss (SFS.md section 3); the KL term is KL(q(z|x) || N(0, I)) of the bar.
    Both are per bar so ``beta`` weighs them as in the ELBO. Metrics: ``<head>_nll``
    (per bar), ``<head>_ce`` (per scored token), ``recon``, ``kl``, ``loss``, ``beta``.
    With ``normalizers`` (``vae_normalizers`` of the whole batch, for gradient
    accumulation) means divide by the whole batch's counts and ``beta`` is reported
    as this batch's share of bars, so every value adds up over micro-batches.
    """
    out = model(batch, key)
    labels = _head_labels(batch, model.layout)
    bar_valid_B = jnp.any(batch["type"] != _PAD, axis=1)
    totals = vae_normalizers(batch, model.layout) if normalizers is None else normalizers
    n_bars = jnp.maximum(totals["n_bars"], 1)
    per_bar_mean = lambda x_B: jnp.sum(jnp.where(bar_valid_B, x_B, 0.0)) / n_bars
    metrics: dict[str, jax.Array] = {}
    recon_B = jnp.zeros(bar_valid_B.shape[0], jnp.float32)
    for name in HEAD_NAMES:
        target_BxT, weight_BxT = labels[name]
        nll_BxT = _cross_entropy(out[name], target_BxT, weight_BxT)
        recon_B = recon_B + jnp.sum(nll_BxT, axis=1)
        metrics[f"{name}_nll"] = per_bar_mean(jnp.sum(nll_BxT, axis=1))
        metrics[f"{name}_ce"] = jnp.sum(nll_BxT) / jnp.maximum(totals[f"{name}_count"], 1)
    mu_BxL, logvar_BxL = out["mu"], out["logvar"]
    kl_B = 0.5 * jnp.sum(jnp.square(mu_BxL) + jnp.exp(logvar_BxL) - 1.0 - logvar_BxL, axis=-1)
    loss = per_bar_mean(recon_B + beta * kl_B)
    bar_share = jnp.sum(bar_valid_B) / n_bars if normalizers is not None else 1.0
    metrics.update(recon=per_bar_mean(recon_B), kl=per_bar_mean(kl_B), loss=loss,
                   beta=jnp.asarray(beta * bar_share, jnp.float32))
    return loss, metrics


def cyclic_beta(step: int | jax.Array, *, max_beta: float = 0.1, cycle_steps: int,
                ramp_fraction: float = 0.5, start_step: int = 0) -> float | jax.Array:
    """Cyclic KL annealing (Fu et al. 2019): per cycle, 0 -> max_beta linearly, then held.

    Within each cycle of ``cycle_steps`` steps beta rises linearly over the first
    ``ramp_fraction`` of the cycle and stays at ``max_beta`` for the rest; restarting
    at 0 lets the decoder re-learn to use z after each phase of strong KL pressure.
    Before ``start_step`` beta is 0 and cycles count from it (the reference: 0 for the
    first 1000 steps, then cycles of 50,000). A Python int step gives a Python float
    (for logs); a jax step gives a jax array.
    """
    if cycle_steps < 1:
        raise ValueError(f"cycle_steps must be >= 1, got {cycle_steps}")
    if not 0.0 < ramp_fraction <= 1.0:
        raise ValueError(f"ramp_fraction must be in (0, 1], got {ramp_fraction}")
    xp = jnp if isinstance(step, jax.Array) else np
    since_start = step - start_step
    phase = xp.mod(xp.maximum(since_start, 0), cycle_steps) / cycle_steps
    beta = xp.where(since_start < 0, 0.0, max_beta * xp.minimum(phase / ramp_fraction, 1.0))
    return float(beta) if xp is np and np.ndim(beta) == 0 else beta


def make_embed_fn(model: BarVAE) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """A jitted host function: bar token arrays [B, T] -> float32 mu [B, L] (for compute_bar_embeddings).

    The model is split once and merged inside the jitted function (STYLE.md section 3),
    so the call compiles once per batch shape and the caller never holds a tracer.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state: nnx.State, tokens: dict[str, jax.Array]) -> jax.Array:
        return nnx.merge(graphdef, state).embed_bars(tokens)

    return lambda tokens: np.asarray(embed(state, {name: jnp.asarray(tokens[name]) for name in TOKEN_FIELDS}),
                                     np.float32)


def vae_fingerprint(model: BarVAE) -> str:
    """sha256 of the VAE's config and parameters: the tag that ties stored embeddings to it.

    Only dict keys and list indices enter the parameter paths (not the Variable's
    attribute name), so the tag does not depend on how the flax version spells paths.
    """
    digest = hashlib.sha256(repr(model.config).encode())
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
    for path, leaf in sorted(leaves, key=lambda item: _path_name(item[0])):
        array = np.asarray(leaf)
        digest.update(f"{_path_name(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _path_name(path: tuple) -> str:
    parts = [str(getattr(entry, "key", getattr(entry, "idx", ""))) for entry in path]
    return "/".join(part for part in parts if part)
