"""The optional compiled lane (dtlsvpn/daemon/_lane.c): built when a C compiler and OpenSSL's
headers are there, skipped otherwise (``optional=True``); dtlsvpn then runs its pure
Python lanes, which pass the same tests (README, "The compiled lane")."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dtlsvpn.daemon._lane",
            ["dtlsvpn/daemon/_lane.c", "dtlsvpn/daemon/_vnet.c"],
            depends=["dtlsvpn/daemon/_vnet.h"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                                "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
            optional=True,
        ),
    ],
)
