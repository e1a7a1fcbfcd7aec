"""Our SGNS trainer vs gensim's Word2Vec on the same corpus and settings, in one run.

Same corpus (the embedded gensim text, 883k tokens, vocabulary 16,418 at min_count 5), same
hyperparameters (sg=1, negative=5, window=5, vector_size=100, sample=1e-3, min_count=5,
alpha 0.025 decaying linearly to 1e-4, epochs=5, noise exponent 0.75), gensim with
workers=2; ours through `experiments.word2vec` (batch 1024, 100 steps per execution run as
one XLA loop, two model copies training side by side, `--parallel_copies=2`) on the same
cores. Effective words are the tokens kept by subsampling (gensim's
count); each side's time is its training alone (ours: epoch begin to end, without the per-epoch
evaluation; gensim: `Word2Vec.train`). Quality: analogy accuracy (3CosAdd, gensim's
questions-words.txt), WordSim-353 and SimLex-999 Spearman of each side's vectors with the
same evaluators.

Run: `python -m benchmarks.word2vec_vs_gensim [--quick] [--repeats=N]` (--quick: the first
300k tokens, one epoch). The full run also trains ours with `--shared_negatives` (one noise set
per batch) and prints its speed and quality on a line of its own. With `--repeats=N` the whole
comparison runs N times (ours, then gensim, each time) and the ratio line is the median of the
N ratios, each printed: on a shared virtual machine one pair of runs moves by ±30%. Target on
2 CPU cores: words/s ratio >= 0.5, quality no worse than gensim's beyond seed noise.
"""

import os
import statistics
import sys
import tempfile

from benchmarks import positive_int_flag


def main(argv):
    quick = "--quick" in argv
    repeats = positive_int_flag(argv, "repeats", 1)
    from experiments import word2vec

    settings = {"noise_study": ["0.75"], "study_seeds": 1, "gensim_baseline": "on",
                "epochs": 1 if quick else 5, "max_tokens": 300_000 if quick else 0,
                "projector_words": 100}
    ratios = []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as model_dir:
            results = word2vec.EXPERIMENT.run_local(os.path.join(model_dir, "run"), **settings)
        side = {row["metric"]: row for row in results["data"]["gensim_side_by_side"]}
        ratios.append(results["metrics"]["words_per_second_ratio"])
        print(f"repeat {repeat + 1}/{repeats}: words/s ours {side['words_per_second']['ours']}, "
              f"gensim {side['words_per_second']['gensim']}, ratio {ratios[-1]:.2f}x")
    corpus = results["data"]["corpus"]
    print(f"\ncorpus {corpus['corpus']}: {corpus['tokens']:,} tokens, vocabulary "
          f"{corpus['vocab_size']:,}; epochs {settings['epochs']}; {os.cpu_count()} CPUs")
    print(f"{'metric':<22}{'ours':>14}{'gensim':>14}{'ratio':>8}")
    for name in ("seconds", "words_per_second", "analogy", "analogy_semantic",
                 "analogy_syntactic", "ws353_spearman", "simlex_spearman"):
        row = side[name]
        print(f"{name:<22}{row['ours']:>14}{row['gensim']:>14}{row['ratio']:>8}")
    for row in results["data"]["noise_study"]:
        if str(row.get("shared negatives")) == "True":  # full mode trains this option too
            print(f"ours with --shared_negatives: words/s {row['words/s']}, analogy "
                  f"{row['analogy']}, WS353 {row['ws353_spearman']}, SimLex "
                  f"{row['simlex_spearman']}")
    if repeats > 1:
        print("(the table is the last repeat's)")
        print(f"ratios: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"words/s ratio (ours/gensim): {statistics.median(ratios):.2f}x"
          + (f" (median of {repeats})" if repeats > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
