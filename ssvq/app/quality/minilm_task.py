"""The MiniLM task: sentence embeddings, distillation loss and fidelity metrics."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MiniLMTask:
    """Sentence embeddings (mean pooling over the attention mask, as the
    sentence-transformers model does; its final L2 normalisation does not
    change cosines) and distillation from the original model.

    loss "embedding": 1 - cosine(student, teacher) of the pooled sentence
    embeddings. loss "hidden" adds, for every encoder layer's output, the mean
    squared error to the teacher's hidden states on real (non-padding) tokens,
    divided by the teacher's mean square there (teacher run alongside, no
    grad)."""

    def __init__(self, max_len: int = 64, loss: str = "hidden", hidden_weight: float = 1.0):
        from compress.models import load_model
        self.lm = load_model("minilm")
        st = self.lm.module
        self.tok = st.tokenizer
        self.bert = st[0].auto_model
        # the sentence embedding is the mean-pooled last hidden state: BERT's pooler
        # (a 384x384 Linear + tanh on the first token) is computed and thrown away.
        # Without it, QuantizedModel wraps the 36 encoder layers only, so every row's
        # bits/weight, speedups and images cover exactly compress.models' layers.
        self.bert.pooler = None
        self.bert.eval()
        self.max_len = max_len
        self.loss_kind = loss
        self.hidden_weight = hidden_weight
        self._teacher_cache: dict[str, torch.Tensor] = {}

    def encode(self, sentences: list[str]) -> dict:
        return dict(self.tok(sentences, padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt"))

    def lengths(self, sentences: list[str]) -> np.ndarray:
        enc = self.tok(sentences, truncation=True, max_length=self.max_len)
        return np.array([len(x) for x in enc["input_ids"]])

    def bucketed(self, sentences: list[str], batch: int, seed: int):
        """A function step -> batch of sentences of similar token length (so
        little compute goes to padding); the batch order is reshuffled every
        epoch."""
        lens = self.lengths(sentences)
        rng = np.random.default_rng(seed)
        jitter = rng.random(len(lens))               # shuffle within equal lengths
        order = np.lexsort((jitter, lens))
        chunks = [order[i:i + batch] for i in range(0, len(order), batch)]
        perms: dict[int, np.ndarray] = {}

        def get(step):
            ep, i = divmod(step, len(chunks))
            if ep not in perms:
                perms.clear()
                perms[ep] = np.random.default_rng([seed, ep]).permutation(len(chunks))
            return [sentences[j] for j in chunks[perms[ep][i]]]
        return get

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)

    def embed(self, model: nn.Module, sentences: list[str], bs: int = 64) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for i in range(0, len(sentences), bs):
                enc = self.encode(sentences[i:i + bs])
                h = model(**enc).last_hidden_state
                outs.append(self.pool(h, enc["attention_mask"]))
        return torch.cat(outs)

    def calibration_run(self, sentences: list[str], bs: int = 16):
        """A function model -> embeddings of `sentences` for calibration hooks
        (QuantizedModel(calibration=...)): sorted by token length and run `bs`
        at a time, so few padding tokens enter the layers' input statistics."""
        order = np.argsort(self.lengths(sentences), kind="stable")
        ordered = [sentences[i] for i in order]
        return lambda model: self.embed(model, ordered, bs=bs)

    def teacher(self, sentences: list[str]) -> torch.Tensor:
        miss = [s for s in sentences if s not in self._teacher_cache]
        if miss:
            e = self.embed(self.bert, miss)
            for s, v in zip(miss, e):
                self._teacher_cache[s] = v
        return torch.stack([self._teacher_cache[s] for s in sentences])

    @staticmethod
    def metrics(student: torch.Tensor, teacher: torch.Tensor) -> dict:
        cos = nn.functional.cosine_similarity(student, teacher, dim=1)
        sn = nn.functional.normalize(student, dim=1)
        tn = nn.functional.normalize(teacher, dim=1)
        iu = torch.triu_indices(len(sn), len(sn), 1)
        a, b = (sn @ sn.T)[iu[0], iu[1]], (tn @ tn.T)[iu[0], iu[1]]
        pear = float(np.corrcoef(a.numpy(), b.numpy())[0, 1])
        return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                "pearson": pear}

    def loss(self, model: nn.Module, sentences: list[str]) -> torch.Tensor:
        enc = self.encode(sentences)
        mask = enc["attention_mask"]
        if self.loss_kind == "embedding":
            t = self.teacher(sentences)
            s = self.pool(model(**enc).last_hidden_state, mask)
            return (1.0 - nn.functional.cosine_similarity(s, t, dim=1)).mean()
        with torch.no_grad():
            th = self.bert(**enc, output_hidden_states=True).hidden_states
        so = model(**enc, output_hidden_states=True)
        sh = so.hidden_states
        t = self.pool(th[-1], mask)
        s = self.pool(sh[-1], mask)
        loss = (1.0 - nn.functional.cosine_similarity(s, t, dim=1)).mean()
        m = mask.unsqueeze(-1).to(t.dtype)
        hid = 0.0
        for a, b in zip(sh[1:], th[1:]):
            hid = hid + (((a - b) ** 2) * m).sum() / ((b ** 2) * m).sum().clamp_min(1e-12)
        return loss + self.hidden_weight * hid / (len(sh) - 1)
