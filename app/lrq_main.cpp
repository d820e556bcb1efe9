#include <iostream>

#include "app/cli.h"

int main(int argc, char **argv) {
  return lrq::cli::run(argc, argv, std::cout, std::cerr);
}
