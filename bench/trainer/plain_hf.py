"""The reference: a plain HF Trainer + PEFT LoRA SFT script, no SwiftMesh, no Ray.

Reads the same JSONL conversations, renders them with the model's chat template, masks
everything but the assistant turns (as the service does, with the same encoder so the token
counts match), and trains with ``transformers.Trainer`` on a PEFT LoRA model. Prints one JSON
line: tokens/s of the training loop (non-padding input tokens / train_runtime), steps, wall
time, peak RSS.

    python bench/trainer/plain_hf.py --model DIR --data data.jsonl --max_steps 30 ...
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--max_steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--bf16", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    t_start = time.time()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from swiftmesh.jobkit.data import Collator, encode_row

    if a.threads:
        torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = [json.loads(line) for line in open(a.data) if line.strip()]
    data = [encode_row(tok, r, task="sft", max_length=a.max_length, assistant_only=True) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    args = TrainingArguments(
        output_dir="/tmp/plain-hf-bench", max_steps=a.max_steps, learning_rate=a.lr, lr_scheduler_type="cosine",
        warmup_steps=0.05, per_device_train_batch_size=a.batch, logging_steps=5, save_strategy="no",
        report_to="none", use_cpu=True, bf16=bool(a.bf16), seed=42, data_seed=42, disable_tqdm=True,
        remove_unused_columns=False, include_num_input_tokens_seen="non_padding", optim="adamw_torch",
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=Collator(tok.pad_token_id))
    out = trainer.train()
    rt = out.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    print(json.dumps({
        "name": "plain HF Trainer + PEFT",
        "tokens": int(tokens),
        "train_runtime_s": rt,
        "tokens_per_second": tokens / rt,
        "steps": trainer.state.global_step,
        "final_loss": [h for h in trainer.state.log_history if "loss" in h][-1]["loss"],
        "wall_s": time.time() - t_start,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
