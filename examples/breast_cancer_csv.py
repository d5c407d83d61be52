"""Writes scikit-learn's breast cancer data set as a CSV that bin/train reads.

The Wisconsin diagnostic breast cancer data (569 rows, 30 features, benign
or malignant) ship inside scikit-learn; nothing is downloaded. README.md's
ensemble table trains on it with

    python examples/breast_cancer_csv.py breast_cancer.csv
    bin/train --dataset=csv --data_path=breast_cancer.csv --model=small
    bin/train --dataset=csv --data_path=breast_cancer.csv --model=small --ensemble=5

scikit-learn is needed here only (``pip install scikit-learn``), not by lowtf.
"""

import sys

import numpy as np
from sklearn.datasets import load_breast_cancer


def main(path: str) -> None:
    data = load_breast_cancer()
    header = ",".join([f"f{i}" for i in range(data.data.shape[1])] + ["label"])
    rows = np.column_stack([data.data, data.target])
    np.savetxt(path, rows, delimiter=",", fmt="%.6g", header=header, comments="")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "breast_cancer.csv")
