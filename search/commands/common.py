"""Arguments shared by several verbs, so every verb spells them the same way."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--model",
        required=required,
        default=None if required else "digits-cnn",
        help="model name: cifar-resnet20|32|44|56, tv:<torchvision name>, digits-cnn (default), or package.module:factory",
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint to load (a state dict, {'state_dict': ...}, or a uniprune checkpoint)")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="digits",
        help="digits (default, embedded), fashion-mnist, cifar10, imagefolder, npz",
    )
    parser.add_argument("--data", default=None, help="the dataset's folder or file (not needed for digits)")


def add_seed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (cuda when available)")
