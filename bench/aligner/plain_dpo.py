"""The reference: a plain TRL DPOTrainer script (no SwiftMesh), as a user would write it.

    python bench/aligner/plain_dpo.py --model DIR --data dpo.jsonl --max_steps 20 --out result.json

Reads ms-swift ``messages`` + ``rejected_response`` rows (converting them to TRL's
prompt/chosen/rejected in a few lines), trains LoRA DPO with the settings given, and writes
the wall-clock time of every optimizer step (``on_log`` with ``logging_steps=1``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max_steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--output_dir", default="/tmp/plain-dpo")
    a = ap.parse_args()

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = []
    with open(a.data) as f:
        for line in f:
            r = json.loads(line)
            rows.append({"prompt": r["messages"][:-1], "chosen": [r["messages"][-1]],
                         "rejected": [{"role": "assistant", "content": r["rejected_response"]}]})
    times: list[tuple[int, float]] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                times.append((state.global_step, time.time()))

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype="float32")
    args = DPOConfig(
        output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=a.batch, learning_rate=a.lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, beta=a.beta, max_length=a.max_length, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, seed=42,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
    with open(a.out, "w") as f:
        json.dump({"step_times": times, "margins": margins}, f)


if __name__ == "__main__":
    main()
