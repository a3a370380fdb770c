// Prints the reference draws for crates/gemma-core/src/random.rs (`draws_match_libstdcxx`): what GNU libstdc++
// makes of std::mt19937(42) as llama.cpp's samplers use it.
//   g++ -O2 -o /tmp/rv scripts/libstdcxx_random_vectors.cpp && /tmp/rv
#include <cstdio>
#include <random>

int main() {
    std::mt19937 a(42);
    std::uniform_real_distribution<double> d(0.0, 1.0);
    for (int i = 0; i < 3; ++i) printf("double %.17g\n", d(a));
    std::mt19937 b(42);
    std::uniform_real_distribution<float> f(0.0f, 1.0f);
    for (int i = 0; i < 3; ++i) printf("float %.9g\n", f(b));
    std::mt19937 c(42);
    std::discrete_distribution<int> disc({0.1f, 0.2f, 0.3f, 0.4f});
    printf("discrete");
    for (int i = 0; i < 10; ++i) printf(" %d", disc(c));
    printf("\n");
}
